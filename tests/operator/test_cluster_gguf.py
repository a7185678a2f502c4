"""A gguf-* ModelDeployment on the real control plane: the node runs the real `lorafuse job`
steps, the GGUF artifact is published for download, and no vLLM pod is started on it."""

from __future__ import annotations

import json
import time

import kubernetes
import pytest

from tests.operator.cluster import (
    NAME,
    condition,
    tiny_spec,
)

pytest.importorskip("gguf")


def _events(control_plane, namespace: str) -> list[str]:
    core = kubernetes.client.CoreV1Api(control_plane.client)
    items = core.list_namespaced_event(namespace).items
    return [e.reason for e in items if e.involved_object.kind == "ModelDeployment"]


def _serving_deployments(control_plane, namespace: str) -> list:
    apps = kubernetes.client.AppsV1Api(control_plane.client)
    selector = f"lorafuse.dev/deployment={NAME}"
    return apps.list_namespaced_deployment(namespace, label_selector=selector).items


def test_a_gguf_q8_0_deployment_is_published_for_download_and_not_served(
    control_plane, namespace, node, mdeps, start_operator
):
    start_operator()
    mdeps.create(NAME, tiny_spec(quantization={"method": "gguf-q8_0"}))

    status = mdeps.wait_status(NAME, lambda s: s.get("phase") == "Published", 240, "Published")
    artifact = status["artifact"]
    folder = node.claim_dir(namespace, "models") / artifact["path"][len("/models/") :]
    assert artifact["quantization"] == "gguf-q8_0"
    assert artifact["digest"].startswith("sha256:")
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "lorafuse.json", "model.gguf"]
    assert json.loads((folder / "lorafuse.json").read_text())["plan"]["artifact"] == folder.name
    assert status["validation"]["passed"] is True
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ForDownload")
    assert f"{artifact['path']}/model.gguf" in ready["message"]
    assert condition(status, "Merged")["reason"] == "Published"
    assert status.get("servingMode") is None and status.get("serving") is None

    job_pod = (
        kubernetes.client.CoreV1Api(control_plane.client)
        .list_namespaced_pod(namespace, label_selector="lorafuse.dev/component=merge")
        .items[0]
    )
    steps = [c.name for c in job_pod.status.init_container_statuses]
    assert steps == ["fetch", "merge", "quantize", "validate"]

    time.sleep(3)  # a few more reconciles (the Job's and pod's last events): still no vLLM
    assert _serving_deployments(control_plane, namespace) == []
    with pytest.raises(kubernetes.client.exceptions.ApiException) as missing:
        kubernetes.client.CoreV1Api(control_plane.client).read_namespaced_service(NAME, namespace)
    assert missing.value.status == 404
    assert {"MergeStarted", "ArtifactPublished", "Published"} <= set(
        _events(control_plane, namespace)
    )


def test_a_k_quant_is_refused_at_admission_without_a_job(
    control_plane, namespace, node, mdeps, start_operator
):
    start_operator()
    mdeps.create(NAME, tiny_spec(quantization={"method": "gguf-q4_k_m"}))

    status = mdeps.wait_status(
        NAME,
        lambda s: condition(s, "Ready").get("reason") == "PolicyViolation",
        90,
        "PolicyViolation",
    )
    assert status["phase"] == "Failed"
    assert "spec.quantization.method" in condition(status, "Ready")["message"]
    assert "llama-cpp-python" in condition(status, "Ready")["message"]
    jobs = kubernetes.client.BatchV1Api(control_plane.client).list_namespaced_job(namespace)
    assert jobs.items == []


def test_switching_a_served_deployment_to_gguf_scales_vllm_to_zero(
    control_plane, namespace, node, mdeps, start_operator
):
    operator = start_operator()
    mdeps.create(NAME, tiny_spec())
    mdeps.wait_status(NAME, lambda s: s.get("phase") == "Serving", 180, "merged serving")

    mdeps.patch_spec(NAME, {"quantization": {"method": "gguf-q8_0"}})
    status = mdeps.wait_status(NAME, lambda s: s.get("phase") == "Published", 240, "Published")
    assert status["artifact"]["quantization"] == "gguf-q8_0"
    [deployment] = _serving_deployments(control_plane, namespace)
    assert deployment.spec.replicas == 0
    assert "Forbidden" not in operator.output()
