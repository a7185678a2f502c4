"""The artifact lifecycle on the real control plane: a failed new plan goes back to the last
validated artifact, `spec.rollback.to` pins one from the history, a deleted artifact is made
again, and a transient Job failure is retried with back-off before it counts as failed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import kubernetes

from tests.cluster.images import ContainerContext, Launch, run_as_given
from tests.operator.cluster import (
    ACCEPTED_VALIDATION,
    MERGER_IMAGE,
    NAME,
    REJECTED_VALIDATION,
    condition,
    get_json,
    ready_pod,
    tiny_spec,
    wait_for,
)


def _serving_merged(status: dict, artifact: str | None = None) -> bool:
    served = (status.get("artifact") or {}).get("name")
    return (
        status.get("phase") == "Serving"
        and status.get("servingMode") == "merged"
        and artifact in (None, served)
    )


def _served_roots(control_plane, node, namespace: str) -> set[str]:
    """What the ready merged pod's vLLM loaded: the artifact folders of its models."""
    pod = ready_pod(control_plane, namespace, NAME, "merged")
    listed = get_json(node.port_for(pod.metadata.name, 8000, namespace), "/v1/models")["data"]
    return {model["root"] for model in listed}


def _jobs(control_plane, namespace: str) -> list[Any]:
    """The merge Jobs (not prune Jobs)."""
    batch = kubernetes.client.BatchV1Api(control_plane.client)
    selector = "lorafuse.dev/component=merge"
    return batch.list_namespaced_job(namespace, label_selector=selector).items


def _merge_events(control_plane, namespace: str) -> list[tuple[str, str]]:
    core = kubernetes.client.CoreV1Api(control_plane.client)
    items = core.list_namespaced_event(namespace).items
    return [(e.reason, e.message) for e in items if e.involved_object.kind == "ModelDeployment"]


def test_a_new_plan_failing_validation_keeps_serving_the_last_validated_artifact(
    control_plane, namespace, node, mdeps, start_operator
):
    start_operator()
    mdeps.create(NAME, tiny_spec(dtype="bfloat16", validation=ACCEPTED_VALIDATION))
    status = mdeps.wait_status(NAME, _serving_merged, 180, "merged serving of artifact A")
    good = status["artifact"]
    serving_pod = ready_pod(control_plane, namespace, NAME, "merged").metadata.uid

    mdeps.patch_spec(NAME, {"validation": REJECTED_VALIDATION})
    status = mdeps.wait_status(
        NAME, lambda s: s.get("phase") == "RolledBack", 180, "the rollback to artifact A"
    )

    assert status["servingMode"] == "merged"  # not base + adapters
    assert status["artifact"] == good
    rolled_back = condition(status, "RolledBack")
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "ValidationFailed")
    assert f"serving the last validated artifact {good['name']}" in rolled_back["message"]
    assert status["merge"]["state"] == "Failed" and status["merge"]["step"] == "validate"
    assert [h["name"] for h in status["history"]] == [good["name"]]
    assert status["history"][0]["validation"]["passed"] is True
    # The pod that served A serves it still: the failed plan never reached the Deployment.
    assert ready_pod(control_plane, namespace, NAME, "merged").metadata.uid == serving_pod
    assert _served_roots(control_plane, node, namespace) == {good["path"]}

    def rolled_back_event() -> str | None:
        events = _merge_events(control_plane, namespace)
        return next((m for reason, m in events if reason == "RolledBack"), None)

    message = wait_for(rolled_back_event, 30, "the RolledBack event")
    assert good["name"] in message and "base + adapters" not in message


def test_rollback_to_pins_an_artifact_of_the_history_and_serving_moves_to_it(
    control_plane, namespace, node, mdeps, start_operator
):
    start_operator()
    mdeps.create(NAME, tiny_spec(dtype="bfloat16", validation=ACCEPTED_VALIDATION))
    first = mdeps.wait_status(NAME, _serving_merged, 180, "artifact A")["artifact"]
    mdeps.patch_spec(NAME, {"dtype": "float32"})
    second = mdeps.wait_status(
        NAME, lambda s: _serving_merged(s) and s["artifact"]["name"] != first["name"], 180, "B"
    )["artifact"]
    assert _served_roots(control_plane, node, namespace) == {second["path"]}
    jobs_before = len(_jobs(control_plane, namespace))

    mdeps.patch_spec(NAME, {"rollback": {"to": first["name"]}})
    status = mdeps.wait_status(
        NAME, lambda s: _serving_merged(s, first["name"]), 120, "serving pinned to A"
    )

    assert status["artifact"] == first
    rolled_back = condition(status, "RolledBack")
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "Pinned")
    assert [h["name"] for h in status["history"]] == [first["name"], second["name"]]
    wait_for(
        lambda: _served_roots(control_plane, node, namespace) == {first["path"]},
        60,
        "the old pods to go",
    )
    assert len(_jobs(control_plane, namespace)) <= jobs_before  # pinning merges nothing


def test_a_deleted_artifact_is_noticed_by_the_serving_pods_check_and_made_again(
    control_plane, namespace, node, mdeps, start_operator
):
    start_operator()
    mdeps.create(NAME, tiny_spec())
    artifact = mdeps.wait_status(NAME, _serving_merged, 180, "merged serving")["artifact"]
    folder = node.claim_dir(namespace, "models") / artifact["path"][len("/models/") :]
    first_job = _jobs(control_plane, namespace)[0].metadata.uid

    shutil.rmtree(folder)  # the directory is gone from the volume
    core = kubernetes.client.CoreV1Api(control_plane.client)
    pod = ready_pod(control_plane, namespace, NAME, "merged")
    core.delete_namespaced_pod(pod.metadata.name, namespace)  # its replacement checks it

    status = mdeps.wait_status(
        NAME,
        lambda s: condition(s, "Merged").get("reason") == "ArtifactMissing",
        120,
        "the condition saying why the plan runs again",
    )
    message = condition(status, "Merged")["message"]
    assert artifact["name"] in message and "failed its check in a serving pod" in message
    status = mdeps.wait_status(NAME, _serving_merged, 180, "merged serving again")
    assert status["artifact"]["name"] == artifact["name"]
    assert status["artifact"]["digest"] == artifact["digest"]  # the same bytes, made again
    assert folder.is_dir()
    assert [j.metadata.uid for j in _jobs(control_plane, namespace)] != [first_job]
    assert _served_roots(control_plane, node, namespace) == {artifact["path"]}
    assert "MergeRerun" in [r for r, _ in _merge_events(control_plane, namespace)]


# --- transient failures ---------------------------------------------------------------------

RETRIES = 2
BACKOFF = 2.0


def _hanging_fetch(ctx: ContainerContext) -> Launch | Sequence[str]:
    """A fetch that never finishes (a stuck download): the Job runs into its deadline."""
    if ctx.container["name"] == "fetch":
        return Launch(["sleep", "600"])
    return run_as_given()(ctx)


def _running_for(job: Any, seconds: float) -> bool:
    """Whether the Job started that long ago. The Job controller times a deadline from the
    first sync only; a deadline cut later is seen at the Job's next change, so it must have
    passed already when it is cut, or the Job hangs until its pod changes."""
    begun = job.status.start_time
    return begun is not None and (datetime.now(UTC) - begun).total_seconds() >= seconds


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_a_job_past_its_deadline_is_retried_with_back_off_then_counts_as_failed(
    control_plane, namespace, node, mdeps, start_operator
):
    node.images.register(MERGER_IMAGE, _hanging_fetch)
    start_operator(extra_args=(f"--transient-retries={RETRIES}", f"--retry-backoff={BACKOFF}"))
    mdeps.create(NAME, tiny_spec())
    batch = kubernetes.client.BatchV1Api(control_plane.client)

    started: dict[int, datetime] = {}  # attempt -> its Job's creation
    failed: dict[int, datetime] = {}  # attempt -> when status recorded its failure
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for job in _jobs(control_plane, namespace):
            attempt = int((job.metadata.annotations or {})["lorafuse.dev/attempt"])
            if attempt in started or not _running_for(job, seconds=3):
                continue
            started[attempt] = job.metadata.creation_timestamp
            # The deadline of a Job that hangs, cut short (spec.job allows 60 s at least).
            patch = {"spec": {"activeDeadlineSeconds": 1}}
            batch.patch_namespaced_job(job.metadata.name, namespace, patch)
        merge = mdeps.status(NAME).get("merge") or {}
        if merge.get("state") == "Failed" and merge.get("finishedAt"):
            failed.setdefault(merge["attempt"], _stamp(merge["finishedAt"]))
            if merge["attempt"] == RETRIES:
                break
        time.sleep(0.3)

    assert sorted(started) == list(range(RETRIES + 1)), started
    for attempt in range(RETRIES):  # each retry waited its back-off after the failure
        waited = (started[attempt + 1] - failed[attempt]).total_seconds()
        assert waited >= BACKOFF * 2**attempt - 1, (attempt, waited)
    status = mdeps.wait_status(
        NAME, lambda s: condition(s, "Merged").get("reason") == "MergeFailed", 30, "failed"
    )
    assert status["merge"]["reason"] == "DeadlineExceeded"
    assert status["merge"]["transient"] is True
    assert status["merge"]["attempt"] == RETRIES
    time.sleep(BACKOFF * 2**RETRIES + 2)  # no further retry after the last one
    assert len(_jobs(control_plane, namespace)) == 1
    assert mdeps.status(NAME)["merge"]["attempt"] == RETRIES
