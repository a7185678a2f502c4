"""One level-based, idempotent reconcile of a ModelDeployment: observe, decide, apply, report."""

from __future__ import annotations

import calendar
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lorafuse.errors import UserError, first_error
from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator import naming
from lorafuse.operator.adapter_sync import pod_lister, sync_adapters
from lorafuse.operator.children.common import Images, Owner, ServedApis
from lorafuse.operator.children.desired import desired_objects, unwanted_children
from lorafuse.operator.children.service import endpoint
from lorafuse.operator.kube import Kube
from lorafuse.operator.lifecycle import (
    Decision,
    JobObservation,
    RetryPolicy,
    Rollout,
    conditions,
    decide,
    phase_of,
    storage_warning,
    with_history,
)
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.metrics import Metrics
from lorafuse.operator.pinning import pin_sources
from lorafuse.operator.policy import Policy, violations
from lorafuse.operator.pruning import count_pruned, retain
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


class ChildrenNotApplied(Exception):
    """Some children were refused by the API server; status says which (ApplyFailed)."""


@dataclass
class Reconciler:
    kube: Kube
    images: Images
    metrics: Metrics
    policy: Policy = field(default_factory=Policy)
    retries: RetryPolicy = field(default_factory=RetryPolicy)

    def reconcile(self, body: dict[str, Any], emit: EmitEvent) -> float | None:
        """Bring the children in line with the spec. The Job's pods, the Job, the Deployment
        and its pods post events as they progress, and those trigger the next reconcile; the
        return value asks for one more after that many seconds (a retry's back-off)."""
        started = time.monotonic()
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["namespace"], meta.get("uid"))
        try:
            phase, requeue_after = self._reconcile(owner, body, emit)
        except Exception as exc:
            self.metrics.errors.labels(type(exc).__name__).inc()
            self.metrics.reconciles.labels("error").inc()
            raise
        finally:
            self.metrics.duration.observe(time.monotonic() - started)
        self.metrics.reconciles.labels("ok").inc()
        self.metrics.set_phase(owner.namespace, owner.name, phase)
        return requeue_after

    def _reconcile(
        self, owner: Owner, body: dict[str, Any], emit: EmitEvent
    ) -> tuple[Phase, float | None]:
        generation = body["metadata"].get("generation")
        old = _read_status(body)
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = first_error(exc).at("spec")
            return self._fail(owner, old, generation, "InvalidSpec", message, emit), None
        if broken := violations(spec, self.policy):
            message = "; ".join(str(v) for v in broken)
            return self._fail(owner, old, generation, "PolicyViolation", message, emit), None
        plan = plan_for(spec)
        current_plan = plan_hash(plan)
        retry_token = (body["metadata"].get("annotations") or {}).get(naming.ANNOTATION_RETRY)

        decision, job, fetch = self._decide(owner, spec, old, current_plan, retry_token)
        deployment_name = naming.deployment_name(owner.name)
        sizing, unfit = _size(spec, decision, old)
        target = _serving_target(decision, sizing) if sizing else None
        start_job = decision.create_job and job is None
        start_fetch = decision.fetch_job and fetch is None
        apis = self.kube.served_apis()
        # Serving pods fetch hf:// sources at the commits the fetch step resolved them to.
        resolved = decision.harvested.get("resolved_sources", old.resolved_sources)
        pinned = pin_sources(spec, resolved)
        desired = desired_objects(
            owner,
            pinned,
            plan,
            self.images,
            merge=start_job,
            serving=target,
            apis=apis,
            fetch=start_fetch,
        )
        if start_job or start_fetch:
            _mark_job(desired, retry_token, decision.attempt)
        if conflict := self._conflict(owner, desired):
            return self._fail(owner, old, generation, "NameConflict", conflict, emit), None
        if spec.serving.autoscaling is not None and target is not None:
            self.kube.release_replicas(owner.namespace, deployment_name)
        refused = self._apply_all(desired)
        self._remove_unwanted(owner, spec, apis, serving=decision.download is None)
        if decision.download and owner.uid:  # for download: no vLLM pods (switched from serving)
            self.kube.scale_to_zero(owner.namespace, deployment_name, owner.uid)
        job_applied = not any(o["kind"] == "Job" for o, _ in refused)
        decision, merge_rerun = self._drive_merge(
            owner, plan, current_plan, job, decision, retry_token, start_job and job_applied, emit
        )
        fetch_rerun = self._drive_fetch(
            owner, current_plan, fetch, decision, start_fetch and job_applied, emit
        )
        requeue_after = 1.0 if merge_rerun or fetch_rerun else decision.requeue_after
        self.kube.delete_stale_merges(owner.namespace, owner.name, current_plan)
        if unfit is not None:
            return self._fail(owner, old, generation, "ServingDoesNotFit", unfit, emit), None
        rollout = self.kube.observe_rollout(owner.namespace, deployment_name)

        new = self._status(owner, spec, old, decision, sizing, rollout, generation)
        # Adapter mode: each ready pod loads and unloads adapters in place (no rollout).
        synced = sync_adapters(pod_lister(self.kube.core), owner, pinned, target, old.serving)
        new = new.model_copy(update={"serving": synced.into(new.serving)})
        if synced.retry_after is not None:
            requeue_after = min(requeue_after or synced.retry_after, synced.retry_after)
        new = retain(self.kube, self.images, owner, spec, plan.artifact_name(), old, new, emit)
        if refused:
            new = _with_apply_failure(new, old, refused, generation)
        self._record(owner, old, new, decision, emit)
        count_pruned(self.metrics, owner, old, new, emit)
        self.metrics.set_serving_mode(owner.namespace, owner.name, new.serving_mode)
        if refused:
            message = _ready_message(new)
            emit("Warning", "ApplyFailed", message)
            raise ChildrenNotApplied(message)
        return new.phase, requeue_after

    def _decide(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        old: ModelDeploymentStatus,
        current_plan: str,
        retry_token: str | None,
    ) -> tuple[Decision, JobObservation | None, JobObservation | None]:
        """What to do, from the plan's Jobs and the serving rollout as they are now."""
        job_name = naming.job_name(owner.name, current_plan)
        job = self.kube.observe_job(owner.namespace, job_name, current_plan)
        # Adapter mode resolves hf:// sources to commits with a Job of the fetch step alone.
        fetch = None
        if spec.serving.mode == "adapter":
            fetch_name = naming.fetch_job_name(owner.name, current_plan)
            fetch = self.kube.observe_job(owner.namespace, fetch_name, current_plan)
        seen = self.kube.observe_rollout(owner.namespace, naming.deployment_name(owner.name))
        decision = decide(
            spec,
            old,
            current_plan,
            job,
            retry_token=retry_token,
            retries=self.retries,
            rollout=seen,
            fetch=fetch,
        )
        return decision, job, fetch

    def _drive_merge(
        self,
        owner: Owner,
        plan: MergePlan,
        current_plan: str,
        job: JobObservation | None,
        decision: Decision,
        retry_token: str | None,
        started: bool,
        emit: EmitEvent,
    ) -> tuple[Decision, bool]:
        """Announce a merge Job just created, or delete one so that it runs again; True when
        it was deleted (its deletion kicks the reconcile that starts it)."""
        job_name = naming.job_name(owner.name, current_plan)
        if started:
            emit("Normal", "MergeStarted", f"job {job_name} for artifact {plan.artifact_name()}")
            running = MergeStatus(
                job=job_name,
                plan_hash=current_plan,
                state="Running",
                retry=retry_token,
                attempt=decision.attempt,
            )
            return replace(decision, merge=running), False
        if not decision.create_job or job is None:
            return decision, False
        if not (decision.rerun_job or job.state == "Succeeded"):
            return decision, False
        # A retry, a healing, or a result lost with its pod: the steps of the next run find
        # their outputs on the volume and only report them.
        self.kube.delete_job(owner.namespace, job_name)
        why = decision.healing or ("retry" if decision.rerun_job else "left no result")
        emit("Warning", "MergeRerun", f"job {job_name}: {why}; running it again")
        return decision, True

    def _drive_fetch(
        self,
        owner: Owner,
        current_plan: str,
        fetch: JobObservation | None,
        decision: Decision,
        started: bool,
        emit: EmitEvent,
    ) -> bool:
        """The same for adapter mode's fetch Job, which resolves hf:// sources to commits."""
        fetch_name = naming.fetch_job_name(owner.name, current_plan)
        if started:
            emit("Normal", "FetchStarted", f"job {fetch_name} resolves hf:// sources to commits")
            return False
        if decision.fetch_job and fetch is not None and decision.rerun_job:
            self.kube.delete_job(owner.namespace, fetch_name)
            emit("Warning", "FetchRerun", f"job {fetch_name}: running it again")
            return True
        return False

    def _conflict(self, owner: Owner, desired: list[dict[str, Any]]) -> str | None:
        """An object the resource would own exists and is not its own: no takeover."""
        if not owner.uid:
            return None
        names = {(o["kind"], o["metadata"]["name"]) for o in desired}
        names |= {
            ("Deployment", naming.deployment_name(owner.name)),
            ("Service", naming.service_name(owner.name)),
        }
        versions = {(o["kind"], o["metadata"]["name"]): o["apiVersion"] for o in desired}
        for kind, name in sorted(names):
            version = versions.get((kind, name), "")
            if reason := self.kube.foreign(kind, owner.namespace, name, owner.uid, version):
                return reason
        return None

    def _remove_unwanted(
        self, owner: Owner, spec: ModelDeploymentSpec, apis: ServedApis, *, serving: bool
    ) -> None:
        """Optional children (autoscaler, disruption budget, ...) the spec turned off; all of
        them when nothing is served (a GGUF artifact for download)."""
        if not owner.uid:
            return
        for kind, api_version, name in unwanted_children(owner, spec, apis, serving=serving):
            self.kube.delete_if_ours(kind, owner.namespace, name, owner.uid, api_version)

    def _apply_all(self, desired: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Apply every child; the ones the API server refuses, with its message."""
        refused = []
        for obj in desired:
            try:
                self.kube.apply(obj)
            except ApiException as exc:
                log.warning("apply %s/%s: %s", obj["kind"], obj["metadata"]["name"], exc.reason)
                refused.append((obj, _api_message(exc)))
        return refused

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
                selector=_serving_selector(owner),
                ready_replicas=rollout.serving_ready,
                updated_replicas=rollout.updated,
                previous=rollout.previous,
                previous_ready_replicas=rollout.previous_ready,
            )
        harvested = decision.harvested
        validation = harvested.get("validation", old.validation)
        history = old.history
        if decision.current_artifact:
            history = with_history(old.history, decision.artifact, validation, time_now())
        return ModelDeploymentStatus(
            phase=phase_of(decision, rollout),
            serving_mode=decision.serve,
            artifact=decision.artifact,
            provenance=harvested.get("provenance", old.provenance),
            validation=validation,
            model_shape=harvested.get("model_shape", old.model_shape),
            resolved_sources=harvested.get("resolved_sources", old.resolved_sources),
            merge=decision.merge,
            serving=serving,
            history=history,
            conditions=_with_storage_warning(
                spec, conditions(decision, rollout, generation, old.conditions), old, generation
            ),
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
        if published := _published_at(new):
            self.metrics.artifact_published.labels(owner.namespace, owner.name).set(published)
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
            step = merge.step or "job"  # a Job past its deadline has no step that failed
            emit("Warning", "MergeFailed", f"{step}: {merge.reason}: {merge.message}")


def _published_at(status: ModelDeploymentStatus) -> float | None:
    """When the merged artifact being served was published (from status.history)."""
    if status.serving_mode != "merged" or status.artifact is None:
        return None
    entry = next((h for h in status.history if h.name == status.artifact.name), None)
    if entry is None or not entry.published_at:
        return None
    try:
        return calendar.timegm(time.strptime(entry.published_at, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:  # status edited by hand: no age rather than a failed reconcile
        return None


def _serving_selector(owner: Owner) -> str:
    """The serving pods' label selector as the scale subresource reports it."""
    return naming.label_selector(naming.selector(owner.name, "serving"))


def _mark_job(desired: list[dict[str, Any]], retry: str | None, attempt: int) -> None:
    """The retry annotation and transient-failure attempt a Job was started under."""
    for obj in desired:
        if obj["kind"] == "Job":
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations[naming.ANNOTATION_ATTEMPT] = str(attempt)
            if retry is not None:
                annotations[naming.ANNOTATION_RETRY] = retry


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def _with_apply_failure(
    new: ModelDeploymentStatus,
    old: ModelDeploymentStatus,
    refused: list[tuple[dict[str, Any], str]],
    generation: int | None,
) -> ModelDeploymentStatus:
    """Ready=False, reason ApplyFailed, with what the API server said about each child."""
    message = "; ".join(f"{o['kind']} {o['metadata']['name']}: {m}" for o, m in refused)
    ready = Condition(type="Ready", status="False", reason="ApplyFailed", message=message[:1000])
    kept = [c for c in new.conditions if c.type != "Ready"]
    return new.model_copy(
        update={"conditions": [_stamped(ready, old.conditions, generation), *kept]}
    )


def _with_storage_warning(
    spec: ModelDeploymentSpec,
    current: list[Condition],
    old: ModelDeploymentStatus,
    generation: int | None,
) -> list[Condition]:
    """Adds condition StorageWarning=True while the volume's access mode invites trouble."""
    warning = storage_warning(spec)
    if warning is None:
        return current
    reason, message = warning
    condition = Condition(type="StorageWarning", status="True", reason=reason, message=message)
    return [*current, _stamped(condition, old.conditions, generation)]


def _ready_message(status: ModelDeploymentStatus) -> str:
    ready = next(c for c in status.conditions if c.type == "Ready")
    return ready.message or ready.reason


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
        rollback = decision.rollback
        if status.serving_mode == "merged":  # the message names the artifact it went back to
            return f"{rollback.reason}: {rollback.message}"
        return f"serving base + adapters: {rollback.reason}: {rollback.message}"
    if status.phase in ("Merging", "Validating") and status.merge:
        return f"job {status.merge.job}"
    if decision.fetch and status.serving is None:
        return f"{decision.fetch[0]}: {decision.fetch[1]}"
    if status.phase == "Published" and decision.download:
        return decision.download
    if status.serving:
        return f"{status.serving.mode}: {status.serving.ready_replicas} ready"
    return status.phase
