"""The state machine: what to serve and which phase, given status and the merge Job's outcome."""

from __future__ import annotations

from datetime import UTC, datetime

from lorafuse.merger.pipeline.result import JobResult
from lorafuse.operator.lifecycle import (
    JobObservation,
    Rollout,
    conditions,
    decide,
    phase_of,
)
from lorafuse.operator.spec import (
    ArtifactStatus,
    Condition,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

PLAN = "a" * 16
OLD_PLAN = "b" * 16
DONE = Rollout(exists=True, replicas=1, total=1, ready=1, updated=1, current=True)
ROLLING = Rollout(exists=True, replicas=1, total=2, ready=1, updated=1, current=True)
RESULT = JobResult.model_validate({
    "ok": True,
    "step": "publish",
    "artifact": {
        "name": "tiny--a",
        "path": "/models/artifacts/tiny--a",
        "digest": "sha256:1",
        "bytes": 1234,
        "quantization": None,
    },
    "validation": {"passed": True, "delta": 0.001},
    "provenance": {"base": "/models/base", "adapters": []},
    "model_shape": {"num_layers": 2},
})


def _status(**fields) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(**fields)


def _artifact(plan: str) -> ArtifactStatus:
    return ArtifactStatus(
        name=f"tiny--{plan[:4]}", path="/models/artifacts/x", digest="sha256:0", plan_hash=plan
    )


def _failed(step: str, reason: str) -> JobObservation:
    result = JobResult(ok=False, step=step, reason=reason, message="score dropped")
    return JobObservation("job", PLAN, "Failed", step, result)


def _adapter_mode(spec: ModelDeploymentSpec) -> ModelDeploymentSpec:
    return spec.model_copy(update={"serving": spec.serving.model_copy(update={"mode": "adapter"})})


def _no_rollback(spec: ModelDeploymentSpec) -> ModelDeploymentSpec:
    rollback = spec.rollback.model_copy(update={"on_failure": False})
    return spec.model_copy(update={"rollback": rollback})


def test_a_new_resource_starts_a_merge_and_serves_nothing_yet(spec):
    decision = decide(spec, _status(), PLAN, None)
    assert decision.create_job and decision.serve is None
    assert phase_of(decision, Rollout()) == "Merging"


def test_the_validate_step_shows_as_validating(spec):
    running = JobObservation("job", PLAN, "Running", "validate")
    assert decide(spec, _status(), PLAN, running).phase == "Validating"


def test_a_published_artifact_switches_serving_to_merged(spec):
    decision = decide(spec, _status(), PLAN, JobObservation("job", PLAN, "Succeeded", None, RESULT))
    assert decision.serve == "merged"
    assert decision.artifact.digest == "sha256:1" and decision.artifact.plan_hash == PLAN
    assert decision.harvested["model_shape"] == {"num_layers": 2}


def test_serving_is_deploying_until_the_rollout_completes(spec):
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, None)
    assert phase_of(decision, ROLLING) == "Deploying"
    assert phase_of(decision, DONE) == "Serving"


def test_a_new_plan_keeps_the_old_artifact_serving_while_it_merges(spec):
    old = _status(artifact=_artifact(OLD_PLAN), serving_mode="merged")
    decision = decide(spec, old, PLAN, JobObservation("job", PLAN, "Running", "merge"))
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN
    assert decision.phase == "Merging"


def test_a_failed_merge_rolls_back_to_adapter_serving(spec):
    decision = decide(spec, _status(), PLAN, _failed("merge", "MergeError"))
    assert decision.serve == "adapter" and not decision.create_job
    assert decision.rollback.reason == "MergeFailed"
    assert phase_of(decision, DONE) == "RolledBack"


def test_a_failed_validation_rolls_back_with_its_own_reason(spec):
    old = _status(artifact=_artifact(OLD_PLAN), serving_mode="merged")
    decision = decide(spec, old, PLAN, _failed("validate", "ValidationFailed"))
    assert decision.serve == "adapter"
    assert decision.rollback.reason == "ValidationFailed"


def test_without_rollback_a_failure_keeps_the_old_serving_and_fails(spec):
    old = _status(artifact=_artifact(OLD_PLAN), serving_mode="merged")
    decision = decide(_no_rollback(spec), old, PLAN, _failed("merge", "MergeError"))
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN
    assert decision.phase == "Failed"


def test_a_failed_plan_is_not_merged_again(spec):
    old = _status(merge={"job": "job", "planHash": PLAN, "state": "Failed", "step": "merge"})
    assert not decide(spec, old, PLAN, None).create_job


def test_a_new_spec_after_a_rollback_merges_and_keeps_adapters_serving(spec):
    rolled = Condition(type="RolledBack", status="True", reason="MergeFailed", message="m")
    old = _status(
        serving_mode="adapter",
        conditions=[rolled],
        merge={"job": "job", "planHash": OLD_PLAN, "state": "Failed"},
    )
    decision = decide(spec, old, PLAN, None)
    assert decision.create_job and decision.serve == "adapter"
    assert decision.rollback.reason == "MergeFailed"


def test_success_after_a_rollback_returns_to_merged(spec):
    old = _status(serving_mode="adapter", phase="RolledBack")
    decision = decide(spec, old, PLAN, JobObservation("job", PLAN, "Succeeded", None, RESULT))
    assert decision.serve == "merged" and decision.rollback is None


def test_adapter_mode_on_request_serves_adapters_without_merging(spec):
    decision = decide(_adapter_mode(spec), _status(), PLAN, None)
    assert decision.serve == "adapter" and not decision.create_job
    assert decision.rollback.reason == "Requested"
    assert phase_of(decision, DONE) == "Serving"


def test_back_to_merged_reuses_the_artifact_of_the_same_plan(spec):
    old = _status(artifact=_artifact(PLAN), serving_mode="adapter")
    decision = decide(spec, old, PLAN, None)
    assert decision.serve == "merged" and not decision.create_job


def test_conditions_report_rollback_and_readiness(spec):
    decision = decide(spec, _status(), PLAN, _failed("validate", "ValidationFailed"))
    by_type = {c.type: c for c in conditions(decision, DONE, 3, [])}
    assert (by_type["RolledBack"].status, by_type["RolledBack"].reason) == (
        "True",
        "ValidationFailed",
    )
    assert by_type["Merged"].status == "False"
    assert by_type["Ready"].status == "True"
    assert by_type["Ready"].observed_generation == 3


def test_condition_time_changes_only_when_its_status_does(spec):
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, None)
    first = conditions(decision, ROLLING, 1, [], now=datetime(2026, 1, 1, tzinfo=UTC))
    later = conditions(decision, DONE, 2, first, now=datetime(2026, 1, 2, tzinfo=UTC))
    times = {c.type: c.last_transition_time for c in later}
    assert times["Merged"] == "2026-01-01T00:00:00Z"  # still True
    assert times["Ready"] == "2026-01-02T00:00:00Z"  # became True
