"""The pure state machine: spec + status + what the cluster shows → what to serve, and phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from lorafuse.merger.pipeline.result import ArtifactResult, JobResult
from lorafuse.operator.spec import (
    ArtifactStatus,
    Condition,
    MergeStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    ServingMode,
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


@dataclass(frozen=True)
class Rollout:
    """The serving Deployment as the cluster shows it."""

    exists: bool = False
    replicas: int = 0  # wanted
    total: int = 0  # pods of any template, old ones included
    ready: int = 0
    updated: int = 0
    current: bool = False  # the controller has seen the latest template

    @property
    def complete(self) -> bool:
        """Every wanted pod runs the latest template and is ready, and no old pod is left."""
        caught_up = self.updated >= self.replicas and self.ready >= self.replicas
        return self.exists and self.current and caught_up and self.total <= self.replicas


@dataclass(frozen=True)
class Rollback:
    reason: str  # Requested | MergeFailed | ValidationFailed
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


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    plan_hash: str,
    job: JobObservation | None,
) -> Decision:
    """Level-based: the same inputs always give the same decision."""
    merge, artifact, harvested = _harvest(status, job)
    current = artifact is not None and artifact.plan_hash == plan_hash
    failed = merge is not None and merge.plan_hash == plan_hash and merge.state == "Failed"
    base = {
        "artifact": artifact,
        "merge": merge,
        "harvested": harvested,
        "current_artifact": current,
    }

    if spec.serving.mode == "adapter":
        requested = Rollback("Requested", "spec.serving.mode is adapter")
        return Decision(create_job=False, serve="adapter", phase=None, rollback=requested, **base)
    if current:
        return Decision(create_job=False, serve="merged", phase=None, **base)
    if failed:
        assert merge is not None
        reason = failure_reason(merge)
        message = f"{merge.step or 'job'}: {merge.message or merge.reason or 'failed'}"
        if spec.rollback.on_failure:
            rollback = Rollback(reason, message)
            return Decision(
                create_job=False, serve="adapter", phase="RolledBack", rollback=rollback, **base
            )
        keep = status.serving_mode
        return Decision(create_job=False, serve=keep, phase="Failed", **base)
    # No result yet for this plan: merge (again), and keep serving whatever serves now.
    running_step = merge.step if merge and merge.plan_hash == plan_hash else None
    phase: Phase = "Validating" if running_step in VALIDATION_STEPS else "Merging"
    keep = status.serving_mode
    rollback = _kept_rollback(status) if keep == "adapter" else None
    return Decision(create_job=True, serve=keep, phase=phase, rollback=rollback, **base)


def failure_reason(merge: MergeStatus) -> str:
    if merge.step == "validate" or merge.reason == "ValidationFailed":
        return "ValidationFailed"
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
        reason=result.reason or job.reason,
        message=_short(result.message or job.message),
    )
    harvested: dict[str, Any] = {}
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
    if decision.phase is not None:
        return decision.phase
    if decision.serve is None:
        return "Pending"
    return "Serving" if rollout.complete else "Deploying"


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
    if decision.serve is None:
        return "Ready", "False", "NotDeployed", "nothing to serve yet"
    if rollout.complete and rollout.ready > 0:
        return "Ready", "True", "Serving", f"{rollout.ready} replica(s) ready ({decision.serve})"
    if rollout.complete:
        return "Ready", "False", "NoReplicas", "serving.replicas is 0"
    return "Ready", "False", "RollingOut", f"{rollout.ready}/{rollout.replicas} replicas ready"


def _merged(decision: Decision) -> tuple[str, str, str, str]:
    merge = decision.merge
    if decision.current_artifact and decision.artifact:
        return "Merged", "True", "Published", decision.artifact.name
    if merge and merge.state == "Failed" and not decision.create_job:
        return "Merged", "False", failure_reason(merge), merge.message or ""
    if decision.create_job:
        step = merge.step if merge and merge.state == "Running" else None
        return "Merged", "False", "Merging", f"step {step}" if step else "merge job scheduled"
    return "Merged", "False", "NotRequested", "serving base + adapters"


def _rolled_back(decision: Decision) -> tuple[str, str, str, str]:
    if decision.rollback and decision.serve == "adapter":
        return "RolledBack", "True", decision.rollback.reason, decision.rollback.message
    return "RolledBack", "False", "NotRolledBack", ""


def _short(text: str | None, limit: int = 1000) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
