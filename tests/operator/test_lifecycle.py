"""The state machine: what to serve and which phase, given status and the merge Job's outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lorafuse.merger.pipeline.result import JobResult
from lorafuse.operator.lifecycle import (
    JobObservation,
    RetryPolicy,
    Rollout,
    conditions,
    decide,
    phase_of,
    storage_warning,
    transient_failure,
    with_history,
)
from lorafuse.operator.spec import (
    HISTORY_LIMIT,
    ArtifactStatus,
    Condition,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    SourceCommitStatus,
)

PLAN = "a" * 16
OLD_PLAN = "b" * 16
DONE = Rollout(exists=True, replicas=1, total=1, ready=1, updated=1, current=True)
ROLLING = Rollout(exists=True, replicas=1, total=2, ready=1, updated=1, current=True)
RESULT = JobResult.model_validate(
    {
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
    }
)


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
    decision = decide(spec, _status(), PLAN, _failed("validate", "ValidationFailed"))
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
    # the hf:// base's commit is known (else a fetch Job runs first: test_fetch_first.py)
    base = SourceCommitStatus(source="hf://acme/tiny-llama@0123abc", commit="c" * 40)
    decision = decide(_adapter_mode(spec), _status(resolved_sources=[base]), PLAN, None)
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


# --- retries ------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _failed_merge(**fields) -> dict:
    return {"job": "job", "planHash": PLAN, "state": "Failed", "step": "merge", **fields}


def test_a_new_retry_annotation_re_runs_a_failed_plan(spec):
    old = _status(merge=_failed_merge(reason="Error"))
    job = JobObservation("job", PLAN, "Failed", "merge", JobResult(ok=False, reason="Error"))
    decision = decide(spec, old, PLAN, job, retry_token="1")
    assert decision.create_job and decision.rerun_job


def test_the_same_retry_annotation_does_not_re_run_again(spec):
    job = JobObservation("job", PLAN, "Failed", "merge", JobResult(ok=False), retry="1")
    assert not decide(spec, _status(), PLAN, job, retry_token="1").create_job


@pytest.mark.parametrize(
    "observed",
    [
        {"pod_reason": "Evicted"},
        {"container_reason": "OOMKilled"},
        {"reason": "DeadlineExceeded"},
        {"pod_reason": "NodeLost"},
    ],
)
def test_transient_failures_are_recognised(observed):
    assert transient_failure(JobObservation("job", PLAN, "Failed", "merge", **observed))


def test_a_refusal_is_never_transient():
    result = JobResult(ok=False, reason="InvalidInput")
    job = JobObservation("job", PLAN, "Failed", "merge", result, pod_reason="Evicted")
    assert not transient_failure(job)


def test_a_transient_failure_waits_its_back_off_then_runs_again(spec):
    finished = NOW - timedelta(seconds=10)
    job = JobObservation(
        "job", PLAN, "Failed", "merge", container_reason="OOMKilled", finished_at=finished
    )
    waiting = decide(spec, _status(), PLAN, job, retries=RetryPolicy(3, 30), now=NOW)
    assert not waiting.create_job and waiting.requeue_after == pytest.approx(20)
    assert waiting.phase == "Merging"
    later = decide(spec, _status(), PLAN, job, retries=RetryPolicy(3, 30), now=NOW + timedelta(60))
    assert later.create_job and later.rerun_job and later.attempt == 1


def test_the_back_off_doubles_with_each_attempt(spec):
    job = JobObservation(
        "job", PLAN, "Failed", "merge", container_reason="OOMKilled", attempt=2, finished_at=NOW
    )
    decision = decide(spec, _status(), PLAN, job, retries=RetryPolicy(3, 30), now=NOW)
    assert decision.requeue_after == pytest.approx(120)


def test_transient_failures_count_as_failed_after_the_last_retry(spec):
    job = JobObservation(
        "job", PLAN, "Failed", "merge", container_reason="OOMKilled", attempt=3, finished_at=NOW
    )
    decision = decide(spec, _status(), PLAN, job, retries=RetryPolicy(3, 30), now=NOW)
    assert not decision.create_job and decision.phase == "RolledBack"


def test_a_deliberate_refusal_never_falls_back_to_adapter_serving(spec):
    decision = decide(spec, _status(), PLAN, _failed("merge", "InvalidInput"))
    assert decision.serve is None and decision.phase == "Failed"
    assert decision.problem[0] == "InvalidInput"


def test_a_refusal_keeps_the_last_validated_artifact_serving(spec):
    old = _status(artifact=_artifact(OLD_PLAN), serving_mode="merged")
    decision = decide(spec, old, PLAN, _failed("merge", "InvalidInput"))
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN


# --- rollback to the last good artifact ----------------------------------------------------


def _history(*plans: str) -> list[HistoryEntry]:
    return [
        HistoryEntry(name=f"tiny--{p[:4]}", path=f"/models/artifacts/tiny--{p[:4]}", plan_hash=p)
        for p in plans
    ]


def test_a_failed_new_plan_keeps_serving_the_last_validated_artifact(spec):
    old = _status(artifact=_artifact(OLD_PLAN), serving_mode="merged")
    decision = decide(spec, old, PLAN, _failed("validate", "ValidationFailed"))
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN
    assert decision.phase == "RolledBack" and decision.rollback.reason == "ValidationFailed"
    assert "tiny--bbbb" in decision.rollback.message


def test_adapter_serving_is_the_fallback_only_without_a_validated_artifact(spec):
    decision = decide(spec, _status(), PLAN, _failed("validate", "ValidationFailed"))
    assert decision.serve == "adapter"


def test_a_plan_found_in_the_history_serves_again_without_a_merge(spec):
    old = _status(artifact=_artifact(OLD_PLAN), history=_history(PLAN, OLD_PLAN))
    decision = decide(spec, old, PLAN, None)
    assert decision.serve == "merged" and not decision.create_job
    assert decision.artifact.plan_hash == PLAN


def test_rollback_to_pins_an_artifact_of_the_history(raw_spec):
    raw_spec["rollback"] = {"to": "tiny--bbbb"}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    old = _status(artifact=_artifact(PLAN), history=_history(OLD_PLAN, PLAN))
    decision = decide(spec, old, PLAN, None)
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN
    assert not decision.create_job and decision.rollback.reason == "Pinned"


def test_rollback_to_an_unknown_artifact_fails_and_keeps_serving(raw_spec):
    raw_spec["rollback"] = {"to": "nope"}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    old = _status(artifact=_artifact(PLAN), serving_mode="merged", history=_history(PLAN))
    decision = decide(spec, old, PLAN, None)
    assert decision.phase == "Failed" and decision.problem[0] == "UnknownArtifact"
    assert decision.serve == "merged" and decision.artifact.plan_hash == PLAN


def test_history_keeps_each_artifact_once_newest_last_within_the_limit():
    history = _history(*(f"{i:016d}" for i in range(HISTORY_LIMIT)))
    newer = with_history(history, _artifact(PLAN), None, "2026-01-01T00:00:00Z")
    assert len(newer) == HISTORY_LIMIT and newer[-1].plan_hash == PLAN
    assert with_history(newer, _artifact(PLAN), None, "later") == newer


# --- self-heal ------------------------------------------------------------------------------


def test_a_failed_artifact_check_after_the_job_re_runs_the_plan(spec):
    done = JobObservation("job", PLAN, "Succeeded", None, RESULT, finished_at=NOW)
    broken = Rollout(
        exists=True, verify_failed_at=NOW + timedelta(minutes=5), verify_message="gone"
    )
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, done, rollout=broken)
    assert decision.create_job and decision.rerun_job and "gone" in decision.healing
    merged = {c.type: c for c in conditions(decision, broken, 1, [])}["Merged"]
    assert (merged.status, merged.reason) == ("False", "ArtifactMissing")


def test_the_condition_says_why_until_the_job_running_again_has_published(spec):
    running = JobObservation("job", PLAN, "Running", "merge", finished_at=None)
    broken = Rollout(exists=True, verify_failed_at=NOW, verify_message="directory not found")
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, running, rollout=broken)
    assert not decision.create_job and decision.serve == "merged"
    merged = {c.type: c for c in conditions(decision, broken, 1, [])}["Merged"]
    assert (merged.status, merged.reason) == ("False", "ArtifactMissing")
    assert merged.message == (
        f"re-publishing {_artifact(PLAN).name} after it failed its check in a serving pod: "
        "directory not found"
    )


def test_a_check_that_failed_before_the_job_finished_is_old_news(spec):
    done = JobObservation("job", PLAN, "Succeeded", None, RESULT, finished_at=NOW)
    stale = Rollout(exists=True, verify_failed_at=NOW - timedelta(minutes=5))
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, done, rollout=stale)
    assert not decision.create_job and decision.serve == "merged"


# --- phase from the pods -------------------------------------------------------------------


def test_serving_needs_a_ready_pod_of_what_status_says_is_served(spec):
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, None)
    only_old_ready = Rollout(
        exists=True, replicas=1, total=1, ready=1, updated=1, current=True, ready_current=0
    )
    assert phase_of(decision, only_old_ready) == "Deploying"
    assert phase_of(decision, DONE) == "Serving"


def test_zero_replicas_is_not_serving(spec):
    decision = decide(spec, _status(artifact=_artifact(PLAN)), PLAN, None)
    empty = Rollout(exists=True, replicas=0, total=0, ready=0, updated=0, current=True)
    assert phase_of(decision, empty) == "Pending"


# --- storage --------------------------------------------------------------------------------


def test_a_read_write_once_volume_warns(spec):
    assert storage_warning(spec)[0] == "ReadWriteOnce"


def test_a_read_write_many_volume_does_not_warn(raw_spec):
    raw_spec["storage"] = {"accessModes": ["ReadWriteMany"]}
    assert storage_warning(ModelDeploymentSpec.model_validate(raw_spec)) is None
