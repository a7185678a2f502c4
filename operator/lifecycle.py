"""The pure state machine: spec + status + what the cluster shows → what to serve, and phase."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from lorafuse.merger.pipeline.result import ArtifactResult, JobResult
from lorafuse.operator.download import without_vllm
from lorafuse.operator.pinning import unresolved
from lorafuse.operator.spec import (
    HISTORY_LIMIT,
    ArtifactStatus,
    Condition,
    HistoryEntry,
    MergeStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    ServingMode,
    SourceCommitStatus,
    ValidationStatus,
)

JobState = Literal["Running", "Succeeded", "Failed"]
VALIDATION_STEPS = ("validate", "publish")


@dataclass(frozen=True)
class JobObservation:
    """The merge Job of the current plan as the cluster shows it."""

    name: str
    plan_hash: str
    state: JobState
    step: str | None = None  # the step running now, or the one that failed
    result: JobResult | None = None  # the termination message, parsed
    reason: str | None = None  # from the Job's condition when there is no result
    message: str | None = None
    retry: str | None = None  # the lorafuse.dev/retry value it was started under
    attempt: int = 0  # retries after transient failures before this one
    finished_at: datetime | None = None
    pod_reason: str | None = None  # e.g. Evicted, NodeLost (the pod's status.reason)
    container_reason: str | None = None  # e.g. OOMKilled (the failed container's)
    sources: tuple[tuple[str, str], ...] = ()  # (hf:// source, commit) the fetch step resolved


@dataclass(frozen=True)
class Rollout:
    """The serving Deployment as the cluster shows it."""

    exists: bool = False
    replicas: int = 0  # wanted
    total: int = 0  # pods of any template, old ones included
    ready: int = 0
    updated: int = 0
    current: bool = False  # the controller has seen the latest template
    ready_current: int | None = None  # ready pods of what status says is served (None: unknown)
    previous: str | None = None  # what ready pods of an older template serve
    previous_ready: int = 0
    verify_failed_at: datetime | None = None  # latest failed artifact check of the served digest
    verify_message: str | None = None

    @property
    def complete(self) -> bool:
        """Every wanted pod runs the latest template and is ready, and no old pod is left."""
        caught_up = self.updated >= self.replicas and self.ready >= self.replicas
        return self.exists and self.current and caught_up and self.total <= self.replicas

    @property
    def serving_ready(self) -> int:
        return self.ready if self.ready_current is None else self.ready_current


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures (evicted, OOMKilled, deadline, node lost) are retried this often."""

    transient_retries: int = 3
    backoff_seconds: float = 30.0  # doubled after every retry

    def delay(self, attempt: int) -> float:
        return self.backoff_seconds * 2**attempt


@dataclass(frozen=True)
class Rollback:
    reason: str  # Requested | Pinned | MergeFailed | ValidationFailed | InvalidInput
    message: str


@dataclass(frozen=True)
class Decision:
    create_job: bool
    serve: ServingMode | None  # None: nothing to serve yet
    artifact: ArtifactStatus | None  # what merged serving uses (last published + validated)
    merge: MergeStatus | None
    phase: Phase | None  # None: follows the rollout (Pending, Deploying, Serving)
    rollback: Rollback | None = None
    current_artifact: bool = False  # the artifact belongs to the current plan
    harvested: dict[str, Any] = field(default_factory=dict)  # status fields from the result
    rerun_job: bool = False  # the plan's finished Job goes first, then runs again
    attempt: int = 0  # the transient-failure retry the next Job is
    requeue_after: float | None = None  # look again then (a retry's back-off)
    problem: tuple[str, str] | None = None  # (reason, message) of a Failed phase
    healing: str | None = None  # why the current plan runs again though it was published
    download: str | None = None  # a GGUF artifact published for download (no vLLM): where
    fetch_job: bool = False  # adapter mode: the plan's fetch-only Job should exist
    fetch: tuple[str, str] | None = None  # (reason, message): why serving waits on that Job


TRANSIENT_POD_REASONS = {"Evicted", "NodeLost", "Shutdown", "Terminated", "Preempting"}
TRANSIENT_CONTAINER_REASONS = {"OOMKilled", "ContainerCannotRun", "StartError"}
TRANSIENT_JOB_REASONS = {"DeadlineExceeded"}
DELIBERATE_REASONS = {"InvalidInput"}  # the Job refused its inputs on purpose


def transient_failure(job: JobObservation) -> bool:
    """Evicted, OOMKilled, past its deadline or its node gone: another run may well succeed."""
    if job.result is not None and job.result.reason in ("ValidationFailed", "InvalidInput"):
        return False
    return (
        job.pod_reason in TRANSIENT_POD_REASONS
        or job.container_reason in TRANSIENT_CONTAINER_REASONS
        or job.reason in TRANSIENT_JOB_REASONS
    )


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    plan_hash: str,
    job: JobObservation | None,
    *,
    retry_token: str | None = None,
    retries: RetryPolicy = RetryPolicy(),
    rollout: Rollout | None = None,
    now: datetime | None = None,
    fetch: JobObservation | None = None,
) -> Decision:
    """Level-based: the same inputs always give the same decision. A GGUF artifact is never
    served: it is for download (operator/download.py). `fetch` is the plan's fetch-only Job
    (adapter mode)."""
    decision = _decide(
        spec, status, plan_hash, job, retry_token=retry_token, retries=retries, rollout=rollout,
        now=now, fetch=fetch,
    )
    return without_vllm(spec, decision)


def _decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    plan_hash: str,
    job: JobObservation | None,
    *,
    retry_token: str | None,
    retries: RetryPolicy,
    rollout: Rollout | None,
    now: datetime | None,
    fetch: JobObservation | None = None,
) -> Decision:
    merge, artifact, harvested = _harvest(status, job)
    now = now or datetime.now(UTC)
    published = _published(artifact, status, plan_hash)
    base = {"merge": merge, "harvested": harvested}

    if spec.serving.mode == "adapter":
        return _adapter_mode(spec, status, artifact, base, fetch, retry_token)
    if spec.rollback.to:
        return _pinned(spec.rollback.to, status, artifact, base)
    if published is not None:
        gone = _artifact_gone(published, job, rollout)
        if gone:
            return Decision(
                create_job=True,
                serve="merged",
                artifact=published,
                phase="Merging",
                rerun_job=job is not None,
                healing=gone,
                **base,
            )
        healing = _republishing(published, job, rollout)
        return Decision(
            create_job=False,
            serve="merged",
            artifact=published,
            phase=None,
            current_artifact=True,
            healing=healing,
            **base,
        )
    failed = merge is not None and merge.plan_hash == plan_hash and merge.state == "Failed"
    if failed:
        assert merge is not None
        if merge.retry != retry_token:
            return _merging(status, artifact, base, rerun=job is not None)
        if merge.transient and merge.attempt < retries.transient_retries:
            wait = retries.delay(merge.attempt) - _seconds_since(merge.finished_at, now)
            if wait <= 0:
                return _merging(
                    status, artifact, base, rerun=job is not None, attempt=merge.attempt + 1
                )
            return replace(_merging(status, artifact, base), create_job=False, requeue_after=wait)
        return _failed(spec, status, artifact, merge, base)
    # No result yet for this plan: merge (again), and keep serving whatever serves now.
    return _merging(status, artifact, base, attempt=merge.attempt if _same(merge, plan_hash) else 0)


def _adapter_mode(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    artifact: ArtifactStatus | None,
    base: dict[str, Any],
    fetch: JobObservation | None,
    retry_token: str | None,
) -> Decision:
    """spec.serving.mode adapter: base + adapters at the commits their hf:// revisions
    resolved to. Without them the plan's fetch-only Job runs first, and nothing new is
    served until it resolved them (a failed fetch is reported, never served around)."""
    if fetch is not None and fetch.sources:
        resolved = [SourceCommitStatus(source=s, commit=c) for s, c in fetch.sources]
        base = {**base, "harvested": {**base["harvested"], "resolved_sources": resolved}}
    missing = unresolved(spec, base["harvested"].get("resolved_sources", status.resolved_sources))
    if not missing:
        requested = Rollback("Requested", "spec.serving.mode is adapter")
        return Decision(
            create_job=False, serve="adapter", artifact=artifact, phase=None, rollback=requested,
            **base,
        )
    wait = {"create_job": False, "serve": None, "artifact": artifact, "fetch_job": True, **base}
    sources = ", ".join(missing)
    if fetch is None or fetch.state == "Running":
        job = f"job {fetch.name}" if fetch else "a fetch job"
        why = ("Fetching", f"{job} resolves {sources} to commits")
        return Decision(phase="Pending", fetch=why, **wait)
    result = fetch.result
    if fetch.state == "Failed":
        if fetch.retry != retry_token:  # lorafuse.dev/retry changed: run it again
            again = f"job {fetch.name}: lorafuse.dev/retry changed; running it again"
            return Decision(phase="Pending", fetch=("Fetching", again), rerun_job=True, **wait)
        detail = (result.message if result else None) or fetch.message or "no message"
        reason = fetch.container_reason or fetch.pod_reason or (result.reason if result else None)
        message = f"job {fetch.name} failed: {reason or fetch.reason or 'Error'}: {detail}"
        return Decision(phase="Failed", fetch=("FetchFailed", _short(message) or ""), **wait)
    if result is None:  # succeeded, but its pod and result are gone: fetch again (no download)
        return Decision(
            phase="Pending", fetch=("Fetching", f"job {fetch.name} left no result"),
            rerun_job=True, **wait,
        )
    message = f"job {fetch.name} resolved no commit for {sources}"
    return Decision(phase="Failed", fetch=("FetchFailed", message), **wait)


def _same(merge: MergeStatus | None, plan_hash: str) -> bool:
    return merge is not None and merge.plan_hash == plan_hash


def _published(
    artifact: ArtifactStatus | None, status: ModelDeploymentStatus, plan_hash: str
) -> ArtifactStatus | None:
    """The current plan's validated artifact: just published, in status, or in the history."""
    if artifact is not None and artifact.plan_hash == plan_hash:
        return artifact
    for entry in reversed(status.history):
        if entry.plan_hash == plan_hash:
            return artifact_from_history(entry)
    return None


def _artifact_gone(
    artifact: ArtifactStatus, job: JobObservation | None, rollout: Rollout | None
) -> str | None:
    """Why the served artifact must be made again: a serving pod's check of it failed after
    the Job that made it finished (the claim was replaced, the directory deleted)."""
    failed_at = rollout.verify_failed_at if rollout else None
    if failed_at is None or (job is not None and job.state == "Running"):
        return None
    if job is not None and (job.finished_at is None or job.finished_at >= failed_at):
        return None
    detail = rollout.verify_message if rollout else None
    return f"{artifact.name} failed its check in a serving pod: {detail or 'missing'}"


def _republishing(
    artifact: ArtifactStatus, job: JobObservation | None, rollout: Rollout | None
) -> str | None:
    """Why the plan's Job runs again though its artifact was published (None: it does not)."""
    if job is None or job.state != "Running":
        return None
    failed = rollout.verify_message if rollout and rollout.verify_failed_at else None
    why = f" after it failed its check in a serving pod: {failed}" if failed else ""
    return f"re-publishing {artifact.name}{why}"


def _merging(
    status: ModelDeploymentStatus,
    artifact: ArtifactStatus | None,
    base: dict[str, Any],
    *,
    rerun: bool = False,
    attempt: int = 0,
) -> Decision:
    """Run the current plan's Job, and keep serving whatever serves now."""
    merge = base["merge"]
    running_step = merge.step if merge is not None and merge.state == "Running" else None
    phase: Phase = "Validating" if running_step in VALIDATION_STEPS else "Merging"
    keep = status.serving_mode
    rollback = _kept_rollback(status) if keep else None
    return Decision(
        create_job=True,
        serve=keep,
        artifact=artifact,
        phase=phase,
        rollback=rollback,
        rerun_job=rerun,
        attempt=attempt,
        **base,
    )


def _failed(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    artifact: ArtifactStatus | None,
    merge: MergeStatus,
    base: dict[str, Any],
) -> Decision:
    """The current plan failed for good: back to the last validated artifact; adapter serving
    only without one, and never for inputs the Job refused on purpose."""
    reason = failure_reason(merge)
    message = f"{merge.step or 'job'}: {merge.message or merge.reason or 'failed'}"
    deliberate = merge.reason in DELIBERATE_REASONS
    if artifact is not None:
        rollback = Rollback(
            reason, f"{message}; serving the last validated artifact {artifact.name}"
        )
        phase: Phase = "RolledBack" if spec.rollback.on_failure else "Failed"
        return Decision(
            create_job=False,
            serve="merged",
            artifact=artifact,
            phase=phase,
            rollback=rollback,
            problem=(reason, message),
            **base,
        )
    if spec.rollback.on_failure and not deliberate:
        return Decision(
            create_job=False,
            serve="adapter",
            artifact=None,
            phase="RolledBack",
            rollback=Rollback(reason, message),
            problem=(reason, message),
            **base,
        )
    # A refusal keeps what serves now, but never starts serving the refused inputs.
    keep = None if deliberate else status.serving_mode
    return Decision(
        create_job=False,
        serve=keep,
        artifact=None,
        phase="Failed",
        problem=(reason, message),
        **base,
    )


def _pinned(
    name: str,
    status: ModelDeploymentStatus,
    artifact: ArtifactStatus | None,
    base: dict[str, Any],
) -> Decision:
    """spec.rollback.to: serve that artifact of the history; no merge."""
    entry = next((e for e in reversed(status.history) if e.name == name), None)
    if entry is None:
        message = f"spec.rollback.to: {name} is not in status.history"
        return Decision(
            create_job=False,
            serve=status.serving_mode,
            artifact=artifact,
            phase="Failed",
            problem=("UnknownArtifact", message),
            **base,
        )
    rollback = Rollback("Pinned", f"spec.rollback.to: {name}")
    return Decision(
        create_job=False,
        serve="merged",
        artifact=artifact_from_history(entry),
        phase=None,
        rollback=rollback,
        **base,
    )


def _seconds_since(stamp: str | None, now: datetime) -> float:
    if not stamp:
        return float("inf")
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (now - then).total_seconds()


def artifact_from_history(entry: HistoryEntry) -> ArtifactStatus:
    return ArtifactStatus(
        name=entry.name,
        path=entry.path,
        digest=entry.digest,
        bytes=entry.bytes,
        quantization=entry.quantization,
        plan_hash=entry.plan_hash,
    )


def with_history(
    history: list[HistoryEntry],
    artifact: ArtifactStatus | None,
    validation: ValidationStatus | None,
    now: str,
) -> list[HistoryEntry]:
    """`history` with `artifact` as its newest entry (once per name), cut to the limit."""
    if artifact is None or any(e.name == artifact.name for e in history):
        return list(history)
    entry = HistoryEntry(
        name=artifact.name,
        path=artifact.path,
        plan_hash=artifact.plan_hash,
        digest=artifact.digest,
        bytes=artifact.bytes,
        quantization=artifact.quantization,
        validation=validation,
        published_at=now,
    )
    return [*history, entry][-HISTORY_LIMIT:]


def failure_reason(merge: MergeStatus) -> str:
    if merge.step == "validate" or merge.reason == "ValidationFailed":
        return "ValidationFailed"
    if merge.reason in DELIBERATE_REASONS:
        return merge.reason
    return "MergeFailed"


def _kept_rollback(status: ModelDeploymentStatus) -> Rollback | None:
    for condition in status.conditions:
        if condition.type == "RolledBack" and condition.status == "True":
            return Rollback(condition.reason, condition.message or "")
    return None


def _harvest(
    status: ModelDeploymentStatus, job: JobObservation | None
) -> tuple[MergeStatus | None, ArtifactStatus | None, dict[str, Any]]:
    """Fold a Job's outcome into merge/artifact/validation; without a Job keep what status has."""
    if job is None:
        return status.merge, status.artifact, {}
    result = job.result or JobResult(ok=False)
    merge = MergeStatus(
        job=job.name,
        plan_hash=job.plan_hash,
        state=job.state,
        step=result.step or job.step,
        reason=result.reason or job.reason or job.container_reason or job.pod_reason,
        message=_short(result.message or job.message),
        retry=job.retry,
        attempt=job.attempt,
        transient=transient_failure(job) if job.state == "Failed" else None,
        finished_at=_stamp(job.finished_at) if job.finished_at else None,
    )
    harvested: dict[str, Any] = {}
    if job.sources:
        harvested["resolved_sources"] = [
            SourceCommitStatus(source=source, commit=commit) for source, commit in job.sources
        ]
    if result.validation:
        harvested["validation"] = ValidationStatus.model_validate(result.validation.model_dump())
    artifact = status.artifact
    if job.state == "Succeeded" and result.ok and result.artifact:
        artifact = artifact_from_result(result.artifact, job.plan_hash)
        harvested["provenance"] = (
            result.provenance.model_dump(mode="json", exclude_none=True)
            if result.provenance
            else None
        )
        harvested["model_shape"] = result.model_shape
    return merge, artifact, harvested


def artifact_from_result(artifact: ArtifactResult, plan_hash: str) -> ArtifactStatus:
    return ArtifactStatus(
        name=artifact.name or artifact.path.rstrip("/").rsplit("/", 1)[-1],
        path=artifact.path,
        digest=artifact.digest,
        bytes=artifact.bytes,
        quantization=artifact.quantization or "none",
        plan_hash=plan_hash,
    )


def phase_of(decision: Decision, rollout: Rollout) -> Phase:
    """Serving only with a ready pod of what status says is served."""
    if decision.phase is not None:
        return decision.phase
    if decision.serve is None:
        return "Pending"
    if rollout.complete and rollout.serving_ready > 0:
        return "Serving"
    if rollout.complete and rollout.replicas == 0:
        return "Pending"
    return "Deploying"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(
    decision: Decision,
    rollout: Rollout,
    generation: int | None,
    previous: list[Condition],
    now: datetime | None = None,
) -> list[Condition]:
    """Ready, Merged and RolledBack; a condition's time changes only when its status does."""
    wanted = [_ready(decision, rollout), _merged(decision), _rolled_back(decision)]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = {c.type: c for c in previous}
    out = []
    for type_, state, reason, message in wanted:
        old = before.get(type_)
        since = old.last_transition_time if old and old.status == state else stamp
        out.append(
            Condition(
                type=type_,
                status=state,
                reason=reason,
                message=message or None,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return out


def _ready(decision: Decision, rollout: Rollout) -> tuple[str, str, str, str]:
    if decision.download:
        return "Ready", "True", "ForDownload", decision.download
    if decision.serve is None and decision.fetch:
        reason, message = decision.fetch
        if rollout.ready:  # the Deployment is left as it was meanwhile
            message += f"; {rollout.ready} pod(s) of the previous spec still serve"
        return "Ready", "False", reason, message
    if decision.serve is None:
        return "Ready", "False", "NotDeployed", "nothing to serve yet"
    if rollout.complete and rollout.serving_ready > 0:
        ready = rollout.serving_ready
        return "Ready", "True", "Serving", f"{ready} replica(s) ready ({decision.serve})"
    if rollout.complete:
        return "Ready", "False", "NoReplicas", "serving.replicas is 0"
    return "Ready", "False", "RollingOut", f"{rollout.ready}/{rollout.replicas} replicas ready"


def _merged(decision: Decision) -> tuple[str, str, str, str]:
    merge = decision.merge
    if decision.healing:  # until the Job that makes the artifact again has published it
        return "Merged", "False", "ArtifactMissing", decision.healing
    if decision.current_artifact and decision.artifact:
        return "Merged", "True", "Published", decision.artifact.name
    if merge and decision.requeue_after is not None:
        wait = f"retry {merge.attempt + 1} in {decision.requeue_after:.0f} s"
        return "Merged", "False", "RetryingTransientFailure", f"{merge.reason}: {wait}"
    if merge and merge.state == "Failed" and not decision.create_job:
        return "Merged", "False", failure_reason(merge), merge.message or ""
    if decision.create_job:
        step = merge.step if merge and merge.state == "Running" else None
        retry = f" (retry {decision.attempt})" if decision.attempt else ""
        message = f"step {step}" if step else "merge job scheduled"
        return "Merged", "False", "Merging", message + retry
    return "Merged", "False", "NotRequested", "serving base + adapters"


def storage_warning(spec: ModelDeploymentSpec) -> tuple[str, str] | None:
    """(reason, message) when the volume cannot be shared by the pods that mount it: a
    ReadWriteOnce claim attaches to one node, and nothing keeps the Job and the serving
    replicas on the same one (Multi-Attach errors)."""
    storage = spec.storage
    if storage.existing_claim or "ReadWriteMany" in storage.access_modes:
        return None
    if "ReadWriteOnce" not in storage.access_modes:
        return None
    replicas = spec.serving.replicas
    return (
        "ReadWriteOnce",
        f"storage.accessModes is ReadWriteOnce: the merge Job and {replicas} serving "
        "replica(s) must land on one node or hit Multi-Attach errors; use ReadWriteMany",
    )


def _rolled_back(decision: Decision) -> tuple[str, str, str, str]:
    if decision.rollback and decision.serve is not None:
        return "RolledBack", "True", decision.rollback.reason, decision.rollback.message
    return "RolledBack", "False", "NotRolledBack", ""


def _short(text: str | None, limit: int = 1000) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
