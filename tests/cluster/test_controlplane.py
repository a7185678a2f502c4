"""The real API server and controller manager: schema validation, status subresource, GC."""

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from .controlplane import wait_until

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "harness.lorafuse.dev", "v1", "widgets"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widgets(control_plane):
    """The Widget CRD, established."""
    ext = kubernetes.client.ApiextensionsV1Api(control_plane.client)
    ext.create_custom_resource_definition(WIDGET_CRD)

    def established():
        crd = ext.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_until(established, timeout=30, what="the Widget CRD to be established")
    # Discovery of the new group can lag a moment behind the Established condition.
    custom = kubernetes.client.CustomObjectsApi(control_plane.client)
    wait_until(
        lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None,
        timeout=30,
        what="the widgets resource to be served",
    )
    yield custom
    ext.delete_custom_resource_definition(WIDGET_CRD["metadata"]["name"])


def widget(name: str, size) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def test_crd_schema_rejects_invalid_object(widgets, namespace):
    with pytest.raises(ApiException) as caught:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("w", 0))
    assert caught.value.status == 422
    assert "spec.size" in caught.value.body


def test_crd_status_is_written_only_through_status_subresource(widgets, namespace):
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("w", 2))
    widgets.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "w",
        {"status": {"phase": "Ignored"}, "spec": {"size": 3}},
    )
    widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
    )
    obj = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    assert obj["spec"] == {"size": 3}
    assert obj["status"] == {"phase": "Ready"}


def test_deleting_owner_removes_its_dependents(control_plane, namespace):
    core = kubernetes.client.CoreV1Api(control_plane.client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}}
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone():
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return "dependent" not in names and names

    remaining = wait_until(dependent_gone, timeout=60, what="the garbage collector")
    assert "bystander" in remaining


def test_rbac_denies_a_service_account_without_roles(control_plane, namespace):
    account = f"system:serviceaccount:{namespace}:default"
    allowed = control_plane.kubectl(
        "auth", "can-i", "create", "pods", "-n", namespace, f"--as={account}", check=False
    )
    assert allowed.stdout.strip() == "no"


def test_stand_in_node_is_registered_ready(control_plane, node):
    ready = control_plane.kubectl(
        "get", "node", node.name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    )
    assert ready.stdout == "True"
