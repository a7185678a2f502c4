"""One level-based, idempotent reconcile of a ModelDeployment: observe, decide, apply, report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from lorafuse.errors import UserError, first_error
from lorafuse.operator import naming
from lorafuse.operator.children.common import Images, Owner
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.children.service import endpoint
from lorafuse.operator.kube import Kube
from lorafuse.operator.lifecycle import Decision, Rollout, conditions, decide, phase_of
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.metrics import Metrics
from lorafuse.operator.serving_target import ServingTarget, model_names
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


@dataclass
class Reconciler:
    kube: Kube
    images: Images
    metrics: Metrics

    def reconcile(self, body: dict[str, Any], emit: EmitEvent) -> None:
        """Bring the children in line with the spec. No requeue: the Job's pods, the Job and
        the Deployment post events as they progress, and those trigger the next reconcile."""
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

    def _reconcile(self, owner: Owner, body: dict[str, Any], emit: EmitEvent) -> Phase:
        generation = body["metadata"].get("generation")
        old = _read_status(body)
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = first_error(exc).at("spec")
            return self._fail(owner, old, generation, "InvalidSpec", message, emit)
        plan = plan_for(spec)
        current_plan = plan_hash(plan)

        job_name = naming.job_name(owner.name, current_plan)
        job = self.kube.observe_job(owner.namespace, job_name, current_plan)
        decision = decide(spec, old, current_plan, job)
        sizing, unfit = _size(spec, decision, old)
        target = _serving_target(decision, sizing) if sizing else None
        start_job = decision.create_job and job is None
        desired = desired_objects(owner, spec, plan, self.images, merge=start_job, serving=target)
        for obj in desired:
            self.kube.apply(obj)
        if start_job:
            emit("Normal", "MergeStarted", f"job {job_name} for artifact {plan.artifact_name()}")
            started = MergeStatus(job=job_name, plan_hash=current_plan, state="Running")
            decision = replace(decision, merge=started)
        elif decision.create_job and job is not None and job.state == "Succeeded":
            # Its pod (and result) went before we read it: run it again; the steps find
            # their outputs on the volume and only report them.
            self.kube.delete_job(owner.namespace, job_name)
            emit("Warning", "MergeResultLost", f"job {job_name} left no result; running it again")
        self.kube.delete_stale_merges(owner.namespace, owner.name, current_plan)
        if unfit is not None:
            return self._fail(owner, old, generation, "ServingDoesNotFit", unfit, emit)
        rollout = self.kube.observe_rollout(owner.namespace, naming.deployment_name(owner.name))

        new = self._status(owner, spec, old, decision, sizing, rollout, generation)
        self._record(owner, old, new, decision, emit)
        return new.phase

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
                models=model_names(owner.name, spec, decision.serve),
                max_model_len=sizing.max_model_len,
                max_num_seqs=sizing.max_num_seqs,
                why=sizing.why,
                endpoint=endpoint(owner, spec),
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


def _size(
    spec: ModelDeploymentSpec, decision: Decision, old: ModelDeploymentStatus
) -> tuple[Sizing | None, str | None]:
    """vLLM's sizing for what is served, or why it does not fit (the merge starts anyway)."""
    if decision.serve is None:
        return None, None
    shape = decision.harvested.get("model_shape") or old.model_shape
    try:
        return size_serving(spec, decision.serve, shape), None
    except UserError as exc:
        return None, str(exc)


def _serving_target(decision: Decision, sizing: Sizing) -> ServingTarget:
    assert decision.serve is not None
    artifact = decision.artifact if decision.serve == "merged" else None
    return ServingTarget(
        mode=decision.serve,
        sizing=sizing,
        artifact_path=artifact.path if artifact else None,
        artifact_digest=artifact.digest if artifact else None,
    )


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
