"""Artifact retention on the real control plane: with keepArtifacts 1, every new plan's
artifact supersedes the last, and a prune Job removes the old folders from the volume."""

from __future__ import annotations

import re

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.operator.cluster import NAME, ModelDeployments, register_images, tiny_spec, wait_for


def _adapters(weight: float) -> list[dict]:
    return [{"name": "support", "source": "/models/adapters/support", "weight": weight}]


def _serving_new(previous: set[str]):
    def check(status: dict) -> bool:
        artifact = (status.get("artifact") or {}).get("name")
        settled = not (status.get("serving") or {}).get("previous")
        return status.get("phase") == "Serving" and artifact not in previous and settled

    return check


def _reclaimed(operator, namespace: str) -> float:
    pattern = (
        rf'lorafuse_artifact_reclaimed_bytes_total\{{name="{NAME}",namespace="{namespace}"\}} (\S+)'
    )
    found = re.search(pattern, operator.metrics())
    return float(found.group(1)) if found else 0.0


def test_superseded_artifacts_leave_the_volume_and_the_served_one_stays(
    control_plane, namespace, node, models_claim, start_operator
):
    register_images(node)
    operator = start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    volume = node.claim_dir(namespace, "models")
    storage = {"existingClaim": "models", "keepArtifacts": 1}
    mdeps.create(NAME, tiny_spec(storage=storage, adapters=_adapters(1.0)))
    first = mdeps.wait_status(NAME, _serving_new(set()), 180, "the first artifact served")
    seen = {first["artifact"]["name"]}
    reclaimed = 0

    for weight in (0.5, 0.25):  # two new plans: each supersedes the one before
        old = mdeps.status(NAME)["artifact"]
        mdeps.patch_spec(NAME, {"adapters": _adapters(weight)})
        mdeps.wait_status(NAME, _serving_new(seen), 180, f"the artifact of weight {weight}")

        def pruned(status: dict, old=old) -> bool:
            history = [entry["name"] for entry in status.get("history", [])]
            return old["name"] not in history and (status.get("retention") or {}).get("runs")

        status = mdeps.wait_status(NAME, pruned, 120, f"{old['name']} pruned")
        served = status["artifact"]["name"]
        seen.add(served)
        assert not (volume / "artifacts" / old["name"]).exists()
        assert not (volume / "work" / old["name"]).exists()
        assert (volume / "artifacts" / served / "lorafuse.json").is_file()
        assert (volume / "work" / served).is_dir()
        assert [entry["name"] for entry in status["history"]] == [served]
        retention = status["retention"]
        assert retention["lastPruned"] == [old["name"]]
        # the artifact's files, counted once though the work directory links them too
        assert retention["reclaimedBytes"] - reclaimed >= old["bytes"]
        assert retention["reclaimedBytes"] - reclaimed < 2 * old["bytes"]
        reclaimed = retention["reclaimedBytes"]

    assert sorted(p.name for p in (volume / "artifacts").iterdir()) == [served]
    wait_for(
        lambda: _reclaimed(operator, namespace) == reclaimed, 30, "the reclaimed-bytes counter"
    )
    jobs = kubernetes.client.BatchV1Api(control_plane.client).list_namespaced_job(
        namespace, label_selector="lorafuse.dev/component=prune"
    )
    assert len(jobs.items) == 1  # counted prune Jobs but the latest are gone
    job = jobs.items[0]
    assert job.metadata.owner_references[0].kind == "ModelDeployment"
    assert "Forbidden" not in operator.output()


@pytest.mark.parametrize("keep", [0, 6])
def test_the_api_server_refuses_keep_artifacts_outside_one_to_five(
    control_plane, namespace, crds, keep
):
    spec = tiny_spec(storage={"existingClaim": "models", "keepArtifacts": keep})
    with pytest.raises(ApiException) as caught:
        ModelDeployments(control_plane, namespace).create("bad", spec)
    assert caught.value.status == 422
    assert "spec.storage.keepArtifacts" in caught.value.body


def test_the_api_server_defaults_keep_artifacts_to_three(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("good", tiny_spec())
    assert created["spec"]["storage"]["keepArtifacts"] == 3
