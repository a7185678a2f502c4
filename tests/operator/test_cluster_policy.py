"""The operator in a shared namespace, on the real API server: the admin policy, no takeover of
objects it does not own, apply errors in status, and retries of a refused plan."""

from __future__ import annotations

import time

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.operator.cluster import (
    NAME,
    OPERATOR_ACCOUNT,
    ModelDeployments,
    condition,
    register_images,
    tiny_spec,
    wait_for,
)

# No existing claim: the operator would create the PVC itself, so nothing needs the node.
SPEC = {
    "base": {"source": "/models/base"},
    "adapters": [{"name": "support", "source": "/models/adapters/support"}],
    "serving": {"image": "vllm/vllm-openai:fake", "gpu": {"count": 0}, "maxModelLen": 128},
}


def _ready(status: dict) -> dict:
    return condition(status, "Ready")


def _reasons(control_plane, namespace: str) -> list[str]:
    core = kubernetes.client.CoreV1Api(control_plane.client)
    items = core.list_namespaced_event(namespace).items
    return [e.reason for e in items if e.involved_object.kind == "ModelDeployment"]


def _eventually_reasons(control_plane, namespace: str, reason: str, timeout: float = 30) -> bool:
    """Whether an event with `reason` is posted within `timeout` (it may trail the status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reason in _reasons(control_plane, namespace):
            return True
        time.sleep(0.5)
    return False


def _jobs(control_plane, namespace: str) -> list:
    return kubernetes.client.BatchV1Api(control_plane.client).list_namespaced_job(namespace).items


def test_a_service_named_like_the_resource_survives_its_create_and_delete(
    control_plane, namespace, start_operator
):
    core = kubernetes.client.CoreV1Api(control_plane.client)
    theirs = {
        "metadata": {"name": NAME, "labels": {"team": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    core.create_namespaced_service(namespace, theirs)
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    mdeps.create(NAME, SPEC)

    status = mdeps.wait_status(
        NAME, lambda s: _ready(s).get("reason") == "NameConflict", 90, "NameConflict"
    )
    assert status["phase"] == "Failed"
    assert f"Service {NAME} already exists" in _ready(status)["message"]
    assert _eventually_reasons(control_plane, namespace, "NameConflict")
    assert _jobs(control_plane, namespace) == []  # nothing applied
    with pytest.raises(ApiException):
        core.read_namespaced_persistent_volume_claim(f"{NAME}-models", namespace)

    mdeps.delete(NAME)
    time.sleep(5)  # the garbage collector would have taken it by now
    service = core.read_namespaced_service(NAME, namespace)
    assert service.metadata.owner_references is None
    assert service.spec.selector == {"app": "web"}
    assert service.spec.ports[0].port == 80


def test_a_policy_violation_names_the_field_and_applies_nothing(
    control_plane, namespace, start_operator
):
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    spec = {**SPEC, "serving": {**SPEC["serving"], "extraArgs": ["--model", "/models/evil"]}}
    mdeps.create(NAME, {**spec, "job": {"image": "evil.example/miner:1"}})

    status = mdeps.wait_status(
        NAME, lambda s: _ready(s).get("reason") == "PolicyViolation", 90, "PolicyViolation"
    )
    assert status["phase"] == "Failed"
    message = _ready(status)["message"]
    assert "spec.job.image" in message and "spec.serving.extraArgs[0]" in message
    assert _eventually_reasons(control_plane, namespace, "PolicyViolation")
    assert _jobs(control_plane, namespace) == []
    core = kubernetes.client.CoreV1Api(control_plane.client)
    assert core.list_namespaced_persistent_volume_claim(namespace).items == []


def test_a_pod_template_overriding_the_security_context_is_a_policy_violation(
    control_plane, namespace, start_operator
):
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    template = {"securityContext": {"runAsUser": 0}, "priorityClassName": "high"}
    mdeps.create(NAME, {**SPEC, "serving": {**SPEC["serving"], "podTemplate": template}})

    status = mdeps.wait_status(
        NAME, lambda s: _ready(s).get("reason") == "PolicyViolation", 90, "PolicyViolation"
    )
    assert "spec.serving.podTemplate.securityContext: is the operator's" in (
        _ready(status)["message"]
    )
    assert _jobs(control_plane, namespace) == []


def test_an_apply_error_is_reported_and_the_rest_is_still_applied(
    control_plane, namespace, start_operator
):
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    mdeps.create(NAME, {**SPEC, "job": {"resources": {"requests": {"cpu": "lots"}}}})

    status = mdeps.wait_status(
        NAME, lambda s: _ready(s).get("reason") == "ApplyFailed", 90, "ApplyFailed"
    )
    message = _ready(status)["message"]
    assert message.startswith(f"Job {NAME}-merge-") and "quantities must match" in message
    assert _eventually_reasons(control_plane, namespace, "ApplyFailed")
    core = kubernetes.client.CoreV1Api(control_plane.client)
    core.read_namespaced_persistent_volume_claim(f"{NAME}-models", namespace)  # applied


def test_a_refused_plan_fails_without_adapter_serving_and_reruns_on_the_retry_annotation(
    control_plane, namespace, node, models_claim, start_operator
):
    register_images(node)
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    missing = [{"name": "support", "source": "/models/adapters/missing"}]
    mdeps.create(NAME, tiny_spec(adapters=missing))

    def refused(s: dict) -> bool:
        return s.get("phase") == "Failed" and condition(s, "Merged").get("reason") == "InvalidInput"

    status = mdeps.wait_status(NAME, refused, 180, "the refusal")
    assert "servingMode" not in status  # never base + the refused adapters, unvalidated
    apps = kubernetes.client.AppsV1Api(control_plane.client)
    assert apps.list_namespaced_deployment(namespace).items == []
    (first,) = _jobs(control_plane, namespace)

    mdeps.api.patch_namespaced_custom_object(
        "lorafuse.dev",
        "v1alpha1",
        namespace,
        "modeldeployments",
        NAME,
        {"metadata": {"annotations": {"lorafuse.dev/retry": "1"}}},
    )

    def rerun() -> bool:
        jobs = _jobs(control_plane, namespace)
        return any(
            j.metadata.uid != first.metadata.uid
            and (j.metadata.annotations or {}).get("lorafuse.dev/retry") == "1"
            for j in jobs
        )

    wait_for(rerun, 90, "a new Job under the retry annotation")
    status = mdeps.wait_status(
        NAME, lambda s: refused(s) and s["merge"].get("retry") == "1", 180, "refused again"
    )
    assert "servingMode" not in status


def test_a_service_account_outside_the_installers_list_is_a_policy_violation(
    control_plane, namespace, start_operator
):
    # The operator's own account lives in this namespace: an author who may only create
    # ModelDeployments must not get pods running with its token (a confused deputy).
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    template = {"serviceAccountName": OPERATOR_ACCOUNT}
    mdeps.create(NAME, {**SPEC, "job": {"podTemplate": template}})

    status = mdeps.wait_status(
        NAME, lambda s: _ready(s).get("reason") == "PolicyViolation", 90, "PolicyViolation"
    )
    assert status["phase"] == "Failed"
    assert (
        f"spec.job.podTemplate.serviceAccountName: ServiceAccount '{OPERATOR_ACCOUNT}' is not "
        "in the operator's allowed ServiceAccounts (allowed: default)"
    ) == _ready(status)["message"]
    assert _eventually_reasons(control_plane, namespace, "PolicyViolation")
    assert _jobs(control_plane, namespace) == []
    core = kubernetes.client.CoreV1Api(control_plane.client)
    assert core.list_namespaced_persistent_volume_claim(namespace).items == []
