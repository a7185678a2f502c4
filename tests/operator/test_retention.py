"""Artifact retention, pure: what a prune Job removes, and how its outcome reaches status."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from lorafuse.merger.pipeline.prune_result import PruneResult
from lorafuse.operator.children.common import RUN_AS, Images
from lorafuse.operator.children.prune import ANNOTATION_RUN, prune_job
from lorafuse.operator.retention import (
    Kept,
    PruneRun,
    decide_retention,
    prunable,
    prune_job_name,
    serving_digests,
)
from lorafuse.operator.spec import (
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    RetentionStatus,
    StorageSpec,
)


def _entry(n: int, **changes) -> HistoryEntry:
    plan = hashlib.sha256(str(n).encode()).hexdigest()[:16]
    name = f"tiny--support--{plan[:12]}"
    fields = {
        "name": name,
        "path": f"/models/artifacts/{name}",
        "plan_hash": plan,
        "digest": f"sha256:{n:064x}",
    }
    return HistoryEntry(**{**fields, **changes})


HISTORY = [_entry(n) for n in range(6)]  # oldest first, as status keeps it


def _names(entries) -> list[str]:
    return [e.name for e in entries]


def test_keep_artifacts_defaults_to_three():
    assert StorageSpec().keep_artifacts == 3


@pytest.mark.parametrize("keep", [0, 6])
def test_keep_artifacts_outside_one_to_five_is_refused(keep):
    with pytest.raises(ValidationError):
        StorageSpec(keep_artifacts=keep)


def test_entries_beyond_the_newest_keep_are_prunable_oldest_first():
    assert _names(prunable(HISTORY, 3, Kept())) == _names(HISTORY[:3])


def test_nothing_is_prunable_within_the_keep_count():
    assert prunable(HISTORY[:3], 3, Kept()) == []


def test_the_served_artifact_is_kept_however_old():
    assert HISTORY[0].name not in _names(prunable(HISTORY, 1, Kept(served=HISTORY[0].name)))


def test_the_pinned_artifact_is_kept():
    assert HISTORY[1].name not in _names(prunable(HISTORY, 1, Kept(pinned=HISTORY[1].name)))


def test_the_current_plans_artifact_is_kept():
    assert HISTORY[2].name not in _names(prunable(HISTORY, 1, Kept(current=HISTORY[2].name)))


def test_what_old_pods_still_serve_is_kept():
    digests = serving_digests(f"merged {HISTORY[0].digest}")
    assert HISTORY[0].name not in _names(prunable(HISTORY, 1, Kept(digests=digests)))


def test_what_another_model_deployment_records_is_kept():
    kept = Kept(others=frozenset({HISTORY[0].name}))
    assert HISTORY[0].name not in _names(prunable(HISTORY, 1, kept))


@pytest.mark.parametrize(
    "foreign",
    [
        {"path": "/models/base"},  # a path that is not ARTIFACT_ROOT/NAME
        {"name": "../base", "path": "/models/artifacts/../base"},
        {"name": "base", "path": "/models/artifacts/base"},  # not named for its plan
        {"plan_hash": None},
        {"plan_hash": "not-a-hash"},
    ],
)
def test_an_entry_not_named_as_this_resources_jobs_name_artifacts_is_never_prunable(foreign):
    history = [_entry(0, **foreign), *HISTORY[1:]]
    assert history[0].name not in _names(prunable(history, 1, Kept()))


def _status(history=HISTORY, **changes) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(history=list(history), **changes)


def test_a_prune_job_starts_for_the_prunable_entries():
    decision = decide_retention(_status(), "bot", 3, Kept(), [])
    assert _names(decision.start) == _names(HISTORY[:3])
    assert decision.job == prune_job_name("bot", HISTORY[:3])
    assert decision.run == 1
    assert decision.status.retention.state == "Running"


def test_no_prune_job_starts_while_pods_of_another_artifact_serve():
    decision = decide_retention(_status(), "bot", 3, Kept(), [], settled=False)
    assert decision.job is None


def test_no_second_prune_job_starts_while_one_runs():
    running = PruneRun("bot-prune-x", 1, "Running")
    decision = decide_retention(_status(), "bot", 3, Kept(), [running])
    assert decision.job is None and decision.status.retention.job == "bot-prune-x"


def _finished(result: PruneResult, run: int = 1, state="Succeeded") -> PruneRun:
    return PruneRun(prune_job_name("bot", HISTORY[:3]), run, state, result)


def test_a_finished_prune_removes_its_entries_from_history_and_counts_the_bytes():
    result = PruneResult(ok=True, pruned=_names(HISTORY[:3]), reclaimed_bytes=3000)
    decision = decide_retention(_status(), "bot", 3, Kept(), [_finished(result)])
    assert _names(decision.status.history) == _names(HISTORY[3:])
    retention = decision.status.retention
    assert (retention.reclaimed_bytes, retention.pruned_artifacts, retention.runs) == (3000, 3, 1)
    assert retention.last_pruned == sorted(_names(HISTORY[:3]))
    assert decision.job is None


def test_a_counted_prune_is_not_counted_again():
    counted = RetentionStatus(reclaimed_bytes=3000, runs=1)
    result = PruneResult(ok=True, pruned=[HISTORY[0].name], reclaimed_bytes=3000)
    status = _status(retention=counted)
    decision = decide_retention(status, "bot", 3, Kept(), [_finished(result)])
    assert decision.status.retention.reclaimed_bytes == 3000


def test_busy_artifacts_stay_in_history_and_the_same_targets_are_not_tried_again():
    result = PruneResult(ok=True, pruned=_names(HISTORY[1:3]), busy=[HISTORY[0].name])
    finished = _finished(result)
    decision = decide_retention(_status(), "bot", 3, Kept(), [finished])
    assert _names(decision.status.history) == _names([HISTORY[0], *HISTORY[3:]])
    assert decision.status.retention.busy == [HISTORY[0].name]
    assert decision.job is None  # a new publish brings a new set, which is tried


def test_busy_artifacts_are_tried_again_once_the_prune_job_is_gone():
    left = RetentionStatus(runs=1, job="bot-prune-x", state="Succeeded", busy=[HISTORY[0].name])
    status = _status([HISTORY[0], *HISTORY[3:]], retention=left)
    assert decide_retention(status, "bot", 3, Kept(), []).job is not None


def test_a_failed_prune_keeps_history_and_says_why():
    result = PruneResult(ok=False, reason="InvalidInput", message="refusing")
    decision = decide_retention(_status(), "bot", 3, Kept(), [_finished(result, state="Failed")])
    assert _names(decision.status.history) == _names(HISTORY)
    retention = decision.status.retention
    assert (retention.state, retention.message, retention.reclaimed_bytes) == (
        "Failed",
        "refusing",
        0,
    )


def test_counted_prune_jobs_but_the_latest_are_deleted():
    old = PruneRun("bot-prune-old", 1, "Succeeded", PruneResult(ok=True))
    latest = PruneRun("bot-prune-new", 2, "Succeeded", PruneResult(ok=True))
    status = _status(HISTORY[3:], retention=RetentionStatus(runs=1, job="bot-prune-old"))
    decision = decide_retention(status, "bot", 3, Kept(), [old, latest])
    assert decision.delete == ["bot-prune-old"]


def test_no_retention_status_until_there_is_something_to_say():
    decision = decide_retention(_status(HISTORY[:3]), "bot", 3, Kept(), [])
    assert decision.status.retention is None


@pytest.mark.parametrize("section", [".spec.storage.keepArtifacts", ".status.retention"])
def test_kubectl_explain_describes_every_retention_field(section):
    from tests.operator.test_crd import _nodes, _schema

    fields = [(p, n) for p, n in _nodes(_schema()) if p.startswith(section)]
    assert fields
    assert [p for p, n in fields if not n.get("description") and not p.endswith("[]")] == []


def test_bytes_a_newly_counted_prune_freed_reach_the_counter_and_an_event(owner):
    from lorafuse.operator.metrics import Metrics
    from lorafuse.operator.pruning import count_pruned

    metrics, events = Metrics(), []
    old = _status(retention=RetentionStatus(reclaimed_bytes=100, pruned_artifacts=1, runs=1))
    counted = RetentionStatus(
        reclaimed_bytes=3100, pruned_artifacts=2, runs=2, last_pruned=[HISTORY[0].name]
    )
    count_pruned(metrics, owner, old, _status(retention=counted), lambda *e: events.append(e))
    count_pruned(
        metrics,
        owner,
        old.model_copy(update={"retention": counted}),
        _status(retention=counted),
        lambda *e: events.append(e),
    )  # already counted
    labels = {"namespace": owner.namespace, "name": owner.name}
    sample = metrics.registry.get_sample_value
    assert sample("lorafuse_artifact_reclaimed_bytes_total", labels) == 3000
    assert sample("lorafuse_artifacts_pruned_total", labels) == 1
    assert [e[1] for e in events] == ["ArtifactsPruned"]


# --- the Job ----------------------------------------------------------------------------


@pytest.fixture
def job(owner, spec: ModelDeploymentSpec) -> dict:
    return prune_job(owner, spec, "support-bot-prune-1", 4, HISTORY[:2], Images())


def test_prune_job_removes_each_target_named_with_its_plan(job):
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    artifacts = [args[i + 1] for i, arg in enumerate(args) if arg == "--artifact"]
    assert artifacts == [f"{e.name}={e.plan_hash}" for e in HISTORY[:2]]
    assert args[:2] == ["--root", "/models"]


def test_prune_job_runs_restricted_as_the_images_user(job):
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == RUN_AS
    assert pod["securityContext"]["fsGroup"] == RUN_AS
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_prune_job_is_owned_by_the_model_deployment_and_goes_after_a_ttl(job, owner):
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner.uid
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["metadata"]["annotations"][ANNOTATION_RUN] == "4"


def test_prune_job_runs_the_slim_operator_image(job):
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == Images().operator
