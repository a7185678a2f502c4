"""One level-based, idempotent reconcile of a ModelDeployment: observe, decide, apply, report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from lorafuse.errors import UserError
from lorafuse.operator import children, naming
from lorafuse.operator.children import Images, Owner, ServingPlan
from lorafuse.operator.kube import Kube
from lorafuse.operator.lifecycle import Decision, Rollout, conditions, decide, phase_of
from lorafuse.operator.metrics import Metrics
from lorafuse.operator.planning import plan_for, plan_hash
from lorafuse.operator.sizing import Sizing, size_serving
from lorafuse.operator.spec import (
    Condition,
    MergeStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    ServingStatus,
)

log = logging.getLogger(__name__)

# (type, reason, message) -> posts a Kubernetes Event on the ModelDeployment.
EmitEvent = Callable[[str, str, str], None]
BUSY_REQUEUE = 3.0  # seconds: while a Job runs or pods roll
IDLE_REQUEUE = 30.0
BUSY_PHASES = ("Pending", "Merging", "Validating", "Deploying")


@dataclass
class Reconciler:
    kube: Kube
    images: Images
    metrics: Metrics

    def reconcile(self, body: dict[str, Any], emit: EmitEvent) -> float:
        """Bring the children in line with the spec; returns seconds until the next look."""
        started = time.monotonic()
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["namespace"], meta.get("uid"))
        try:
            phase = self._reconcile(owner, body, emit)
        except Exception as exc:
            self.metrics.errors.labels(type(exc).__name__).inc()
            self.metrics.reconciles.labels("error").inc()
            raise
        finally:
            self.metrics.duration.observe(time.monotonic() - started)
        self.metrics.reconciles.labels("ok").inc()
        self.metrics.set_phase(owner.namespace, owner.name, phase)
        return BUSY_REQUEUE if phase in BUSY_PHASES else IDLE_REQUEUE

    def _reconcile(self, owner: Owner, body: dict[str, Any], emit: EmitEvent) -> Phase:
        generation = body["metadata"].get("generation")
        old = _read_status(body)
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            return self._fail(owner, old, generation, "InvalidSpec", _first_error(exc), emit)
        plan = plan_for(spec)
        current_plan = plan_hash(plan)

        claim = children.persistent_volume_claim(owner, spec)
        if claim:
            self.kube.apply(claim)
        job_name = naming.job_name(owner.name, current_plan)
        job = self.kube.observe_job(owner.namespace, job_name, current_plan)
        decision = decide(spec, old, current_plan, job)
        if decision.create_job and job is None:
            self.kube.apply(children.plan_config_map(owner, plan, current_plan))
            self.kube.apply(children.merge_job(owner, spec, plan, current_plan, self.images))
            emit("Normal", "MergeStarted", f"job {job_name} for artifact {plan.artifact_name()}")
            started = MergeStatus(job=job_name, plan_hash=current_plan, state="Running")
            decision = replace(decision, merge=started)
        elif decision.create_job and job is not None and job.state == "Succeeded":
            # Its pod (and result) went before we read it: run it again; the steps find
            # their outputs on the volume and only report them.
            self.kube.delete_job(owner.namespace, job_name)
            emit("Warning", "MergeResultLost", f"job {job_name} left no result; running it again")
        self.kube.delete_stale_merges(owner.namespace, owner.name, current_plan)

        sizing = None
        if decision.serve is not None:
            shape = decision.harvested.get("model_shape") or old.model_shape
            try:
                sizing = size_serving(spec, decision.serve, shape)
            except UserError as exc:
                return self._fail(owner, old, generation, "ServingDoesNotFit", str(exc), emit)
            self._apply_serving(owner, spec, decision, sizing)
        rollout = self.kube.observe_rollout(owner.namespace, naming.deployment_name(owner.name))

        new = self._status(owner, spec, old, decision, sizing, rollout, generation)
        self._record(owner, old, new, decision, emit)
        return new.phase

    def _apply_serving(
        self, owner: Owner, spec: ModelDeploymentSpec, decision: Decision, sizing: Sizing
    ) -> None:
        assert decision.serve is not None
        artifact = decision.artifact if decision.serve == "merged" else None
        serving = ServingPlan(
            mode=decision.serve,
            sizing=sizing,
            artifact_path=artifact.path if artifact else None,
            artifact_digest=artifact.digest if artifact else None,
        )
        self.kube.apply(children.serving_deployment(owner, spec, serving, self.images))
        self.kube.apply(children.service(owner, spec))

    def _status(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        old: ModelDeploymentStatus,
        decision: Decision,
        sizing: Sizing | None,
        rollout: Rollout,
        generation: int | None,
    ) -> ModelDeploymentStatus:
        serving = None
        if decision.serve is not None and sizing is not None:
            serving = ServingStatus(
                mode=decision.serve,
                models=children.model_names(owner, spec, decision.serve),
                max_model_len=sizing.max_model_len,
                max_num_seqs=sizing.max_num_seqs,
                why=sizing.why,
                endpoint=children.endpoint(owner, spec),
                replicas=rollout.replicas,
                ready_replicas=rollout.ready,
                updated_replicas=rollout.updated,
            )
        harvested = decision.harvested
        return ModelDeploymentStatus(
            phase=phase_of(decision, rollout),
            serving_mode=decision.serve,
            artifact=decision.artifact,
            provenance=harvested.get("provenance", old.provenance),
            validation=harvested.get("validation", old.validation),
            model_shape=harvested.get("model_shape", old.model_shape),
            merge=decision.merge,
            serving=serving,
            conditions=conditions(decision, rollout, generation, old.conditions),
            observed_generation=generation,
        )

    def _fail(
        self,
        owner: Owner,
        old: ModelDeploymentStatus,
        generation: int | None,
        reason: str,
        message: str,
        emit: EmitEvent,
    ) -> Phase:
        """The spec cannot be acted on: say why, and leave whatever serves now alone."""
        ready = Condition(type="Ready", status="False", reason=reason, message=message)
        kept = [c for c in old.conditions if c.type != "Ready"]
        new = old.model_copy(
            update={
                "phase": "Failed",
                "conditions": [*kept, _stamped(ready, old.conditions, generation)],
                "observed_generation": generation,
            }
        )
        if _dump(new) != _dump(old):
            self.kube.apply_status(owner.namespace, owner.name, _dump(new))
            emit("Warning", reason, message)
        return "Failed"

    def _record(
        self,
        owner: Owner,
        old: ModelDeploymentStatus,
        new: ModelDeploymentStatus,
        decision: Decision,
        emit: EmitEvent,
    ) -> None:
        """Write status when it changed, with an event and metrics for every transition."""
        if _dump(new) == _dump(old):
            return
        self.kube.apply_status(owner.namespace, owner.name, _dump(new))
        if new.artifact and new.artifact.bytes is not None and new.serving_mode == "merged":
            self.metrics.artifact_bytes.labels(owner.namespace, owner.name).set(new.artifact.bytes)
        if new.merge and (old.merge is None or old.merge.state != new.merge.state):
            self._merge_finished(owner, new, emit)
        if new.phase != old.phase:
            kind = "Warning" if new.phase in ("RolledBack", "Failed") else "Normal"
            emit(kind, new.phase, _phase_message(new, decision))
        if new.serving_mode != old.serving_mode and new.serving_mode:
            emit(
                "Normal",
                "ServingModeChanged",
                f"{old.serving_mode or 'none'} -> {new.serving_mode}",
            )
        if new.phase == "RolledBack" and old.phase != "RolledBack" and decision.rollback:
            self.metrics.rollbacks.labels(decision.rollback.reason).inc()

    def _merge_finished(self, owner: Owner, new: ModelDeploymentStatus, emit: EmitEvent) -> None:
        merge = new.merge
        assert merge is not None
        if merge.state == "Running":
            return
        duration = self.kube.job_duration(owner.namespace, merge.job)
        if duration is not None:
            self.metrics.merge_duration.labels(merge.state.lower()).observe(duration)
        if merge.state == "Succeeded" and new.artifact:
            emit("Normal", "ArtifactPublished", f"{new.artifact.name} {new.artifact.digest}")
        else:
            emit("Warning", "MergeFailed", f"{merge.step}: {merge.reason}: {merge.message}")


def _read_status(body: dict[str, Any]) -> ModelDeploymentStatus:
    try:
        return ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        log.warning("ignoring an unreadable status of %s", body["metadata"]["name"])
        return ModelDeploymentStatus()


def _dump(status: ModelDeploymentStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "spec"
    return f"spec.{where}: {error['msg']}"


def _stamped(condition: Condition, previous: list[Condition], generation: int | None) -> Condition:
    before = next((c for c in previous if c.type == condition.type), None)
    same = before is not None and (before.status, before.reason, before.message) == (
        condition.status,
        condition.reason,
        condition.message,
    )
    since = before.last_transition_time if same and before else time_now()
    return condition.model_copy(
        update={"last_transition_time": since, "observed_generation": generation}
    )


def time_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _phase_message(status: ModelDeploymentStatus, decision: Decision) -> str:
    if status.phase == "RolledBack" and decision.rollback:
        return f"serving base + adapters: {decision.rollback.reason}: {decision.rollback.message}"
    if status.phase in ("Merging", "Validating") and status.merge:
        return f"job {status.merge.job}"
    if status.serving:
        return f"{status.serving.mode}: {status.serving.ready_replicas} ready"
    return status.phase
