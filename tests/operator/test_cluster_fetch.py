"""Explicit adapter mode on the real control plane: before any merge, a Job of the fetch step
alone resolves the hf:// branches (from a Hugging Face cache on the model volume, offline),
and only then does the operator create the serving Deployment, pinned to those commits."""

from __future__ import annotations

import kubernetes
from kubernetes.client.exceptions import ApiException

from lorafuse.operator import naming
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.spec import ModelDeploymentSpec
from tests.operator.cluster import (
    ADAPTER_COMMIT,
    BASE_COMMIT,
    NAME,
    condition,
    offline_hub,
    serving_pinned_deployment,
    tiny_spec,
)

OFFLINE = {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]}


def _adapter_spec(adapter: str) -> dict:
    return tiny_spec(
        base={"source": "hf://acme/tiny", "revision": "main"},
        adapters=[{"name": "support", "source": adapter}],
        serving={"mode": "adapter"},
        job=OFFLINE,
    )


def _no_deployment(apps, namespace: str) -> bool:
    try:
        apps.read_namespaced_deployment(f"{NAME}-vllm", namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_explicit_adapter_mode_fetches_first_and_serves_the_commits(
    control_plane, namespace, node, mdeps, tiny_sources, start_operator
):
    offline_hub(node, namespace, tiny_sources)
    start_operator()
    spec = _adapter_spec("hf://acme/support@main")
    mdeps.create(NAME, spec)

    status = mdeps.wait_status(
        NAME, lambda s: s.get("servingMode") == "adapter", 120, "adapter serving"
    )
    assert status["resolvedSources"] == [
        {"source": "hf://acme/tiny@main", "commit": BASE_COMMIT},
        {"source": "hf://acme/support@main", "commit": ADAPTER_COMMIT},
    ]
    assert "merge" not in status  # no merge Job ran
    assert condition(status, "Merged")["reason"] == "NotRequested"

    current = plan_hash(plan_for(ModelDeploymentSpec.model_validate(spec)))
    batch = kubernetes.client.BatchV1Api(control_plane.client)
    jobs = batch.list_namespaced_job(namespace).items
    assert [j.metadata.name for j in jobs] == [naming.fetch_job_name(NAME, current)]
    (job,) = jobs
    containers = job.spec.template.spec.containers
    assert [c.name for c in containers] == ["fetch"] and not job.spec.template.spec.init_containers
    assert job.status.succeeded == 1

    deployment = serving_pinned_deployment(control_plane, namespace)
    # created once the fetch had finished, never with the branch names
    assert deployment.metadata.creation_timestamp >= job.status.completion_time


def test_a_revision_the_fetch_cannot_resolve_fails_and_serves_nothing(
    control_plane, namespace, node, mdeps, tiny_sources, start_operator
):
    offline_hub(node, namespace, tiny_sources)
    start_operator()
    mdeps.create(NAME, _adapter_spec("hf://acme/support@v9"))  # not in the offline cache

    status = mdeps.wait_status(NAME, lambda s: s.get("phase") == "Failed", 120, "a failed fetch")
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "FetchFailed"
    assert "hf://acme/support@v9" in ready["message"] and "InvalidInput" in ready["message"]
    assert "servingMode" not in status and not status.get("resolvedSources")
    apps = kubernetes.client.AppsV1Api(control_plane.client)
    assert _no_deployment(apps, namespace)
