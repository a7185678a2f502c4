"""What the API server enforces: the CRD's schema, and the operator's least-privilege RBAC."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from tests.operator.cluster import OPERATOR_ACCOUNT, ModelDeployments

VALID = {
    "base": {"source": "/models/base"},
    "adapters": [{"name": "support", "source": "/models/adapters/support"}],
}


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("spec.serving.maxModelLen", {"serving": {"maxModelLen": "huge"}}),
        ("spec.serving.mode", {"serving": {"mode": "both"}}),
        ("spec.serving.gpuMemoryUtilization", {"serving": {"gpuMemoryUtilization": 1.5}}),
        ("spec.quantization.method", {"quantization": {"method": "int3"}}),
        ("spec.base.source", {"base": {"source": "s3://bucket/model"}}),
        ("spec.adapters", {"adapters": []}),
        ("spec.validation.eval", {"validation": {"eval": {}}}),
    ],
)
def test_the_api_server_rejects_an_invalid_spec(control_plane, namespace, crds, field, change):
    with pytest.raises(ApiException) as caught:
        ModelDeployments(control_plane, namespace).create("bad", {**VALID, **change})
    assert caught.value.status == 422
    assert field in caught.value.body


def test_the_api_server_fills_in_defaults(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("good", VALID)
    assert created["spec"]["serving"]["mode"] == "merged"
    assert created["spec"]["serving"]["maxModelLen"] == "auto"
    assert created["spec"]["rollback"]["onFailure"] is True


def _can_i(control_plane, namespace: str, verb: str, resource: str) -> bool:
    account = f"system:serviceaccount:{namespace}:{OPERATOR_ACCOUNT}"
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    proc = control_plane.kubectl(
        "auth", "can-i", verb, resource, *extra, f"--as={account}", "-n", namespace, check=False
    )
    return proc.stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "deployments.apps"),
        ("delete", "services"),
        ("delete", "persistentvolumeclaims"),
        ("patch", "modeldeployments.lorafuse.dev"),
        ("delete", "modeldeployments.lorafuse.dev"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "pods/exec"),
    ],
)
def test_the_operator_account_cannot_do_more(
    control_plane, namespace, operator_kubeconfig, verb, resource
):
    assert not _can_i(control_plane, namespace, verb, resource)


def test_the_operator_account_sees_no_other_namespace(
    control_plane, namespace, operator_kubeconfig
):
    account = f"system:serviceaccount:{namespace}:{OPERATOR_ACCOUNT}"
    proc = control_plane.kubectl(
        "auth",
        "can-i",
        "list",
        "modeldeployments.lorafuse.dev",
        f"--as={account}",
        "-n",
        "kube-system",
        check=False,
    )
    assert proc.stdout.strip() == "no"


def test_a_gpu_serving_deployment_is_accepted_by_server_side_apply(
    control_plane, namespace, raw_spec
):
    from lorafuse.operator.children.common import Images, Owner
    from lorafuse.operator.children.deployment import serving_deployment
    from lorafuse.operator.kube import Kube
    from lorafuse.operator.serving_target import ServingTarget
    from lorafuse.operator.sizing import Sizing
    from lorafuse.operator.spec import ModelDeploymentSpec

    raw_spec["serving"] |= {"gpu": {"count": 1}}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    serving = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a", "sha256:ab")
    deployment = serving_deployment(Owner("gpu", namespace), spec, serving, Images())
    Kube(control_plane.api_client()).apply(deployment)
    stored = control_plane.kubectl("get", "deployment", "-n", namespace, "-o", "json").stdout
    assert '"nvidia.com/gpu": "1"' in stored
