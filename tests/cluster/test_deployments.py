"""Deployments: the real Deployment/ReplicaSet controllers, readiness from the node's probes."""

import urllib.request

import kubernetes
import pytest

from .controlplane import wait_until
from .images import ContainerContext, Launch

pytestmark = pytest.mark.cluster


def http_server(ctx: ContainerContext) -> Launch:
    """Image whose entrypoint is `python -m http.server 8000`, bound to the remapped port."""
    return Launch(["python", "-m", "http.server", str(ctx.port(8000)), "--bind", "127.0.0.1"])


def web_deployment(name: str) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            # With the default 25% maxUnavailable one replica would count as available at once.
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "harness/http-server:1",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        },
    }


def test_deployment_becomes_available_and_serves_on_remapped_port(control_plane, namespace, node):
    node.images.register("harness/http-server:*", http_server)
    apps = kubernetes.client.AppsV1Api(control_plane.client)
    core = kubernetes.client.CoreV1Api(control_plane.client)
    apps.create_namespaced_deployment(namespace, web_deployment("web"))

    def available():
        status = apps.read_namespaced_deployment("web", namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return status.available_replicas == 1 and conditions.get("Available") == "True"

    wait_until(available, timeout=60, what="deployment web to become Available")
    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=web").items
    port = node.port_for(pod.metadata.name, 8000)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
