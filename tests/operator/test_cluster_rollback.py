"""Automatic rollback on the real control plane: a merge that fails validation serves
base + adapters instead, and a corrected spec brings merged serving back."""

from __future__ import annotations

import kubernetes

from tests.operator.cluster import (
    ACCEPTED_VALIDATION,
    NAME,
    REJECTED_VALIDATION,
    ModelDeployments,
    condition,
    get_json,
    ready_pod,
    register_images,
    tiny_spec,
)


def test_failed_validation_rolls_back_to_adapters_until_a_new_spec_merges(
    control_plane, namespace, node, models_claim, start_operator
):
    register_images(node)
    operator = start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    mdeps.create(NAME, tiny_spec(dtype="bfloat16", validation=REJECTED_VALIDATION))

    status = mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") == "RolledBack" and s.get("serving", {}).get("readyReplicas"),
        180,
        "rollback to adapter serving",
    )
    assert status["servingMode"] == "adapter"
    rolled_back = condition(status, "RolledBack")
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "ValidationFailed")
    assert status["merge"]["state"] == "Failed" and status["merge"]["step"] == "validate"
    assert "artifact" not in status
    pod = ready_pod(control_plane, namespace, NAME, "adapter")
    port = node.port_for(pod.metadata.name, 8000, namespace)
    served = {m["id"] for m in get_json(port, "/v1/models")["data"]}
    assert served == {NAME, f"{NAME}-base"}
    assert 'lorafuse_rollbacks_total{reason="ValidationFailed"} 1.0' in operator.metrics()

    mdeps.patch_spec(NAME, {"validation": ACCEPTED_VALIDATION})
    status = mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") == "Serving" and s.get("servingMode") == "merged",
        180,
        "merged serving after the fix",
    )
    assert condition(status, "RolledBack")["status"] == "False"
    jobs = kubernetes.client.BatchV1Api(control_plane.client).list_namespaced_job(namespace)
    assert [j.status.succeeded for j in jobs.items] == [1]  # the failed one is gone
