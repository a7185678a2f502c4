"""The real node: pods run as the image's non-root uid, fsGroup, enforcement, Services route."""

from __future__ import annotations

import urllib.request

import kubernetes

from tests.cluster.controlplane import wait_until

from .pods import RESTRICTED_POD, UID, finished, logs, pod


def test_a_non_root_pod_writes_to_a_root_owned_local_volume_through_fs_group(
    real_cluster, node_namespace, local_volume
):
    folder = local_volume("data")
    assert (folder.stat().st_uid, oct(folder.stat().st_mode & 0o777)) == (0, "0o755")
    core = kubernetes.client.CoreV1Api(real_cluster.plane.client)
    spec = pod(
        "writer",
        real_cluster.images["merger"],
        "id -u; id -G; echo hello > /data/out.txt && cat /data/out.txt",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    )
    core.create_namespaced_pod(node_namespace, spec)
    done = finished(core, node_namespace, "writer")
    out = logs(core, node_namespace, "writer").split()
    assert done.status.phase == "Succeeded", out
    assert out[0] == str(UID) and str(UID) in out[1:-1] and out[-1] == "hello"
    assert (folder / "out.txt").stat().st_uid == UID


def test_the_kubelet_refuses_a_root_image_under_run_as_non_root(real_cluster, node_namespace):
    core = kubernetes.client.CoreV1Api(real_cluster.plane.client)
    spec = pod("root", real_cluster.images["base"], "id -u")
    spec["spec"]["securityContext"] = {k: v for k, v in RESTRICTED_POD.items() if k != "runAsUser"}
    spec["spec"]["securityContext"].pop("runAsGroup")
    core.create_namespaced_pod(node_namespace, spec)

    def refused():
        statuses = core.read_namespaced_pod("root", node_namespace).status.container_statuses
        waiting = statuses and statuses[0].state.waiting
        return waiting and waiting.reason == "CreateContainerConfigError" and waiting.message

    message = wait_until(refused, timeout=60, what="CreateContainerConfigError")
    assert "runAsNonRoot and image will run as root" in message


def test_a_cluster_ip_service_routes_to_its_pod(real_cluster, node_namespace):
    core = kubernetes.client.CoreV1Api(real_cluster.plane.client)
    spec = pod(
        "web",
        real_cluster.images["base"],
        "cd /tmp && echo served > index.html && exec python3 -m http.server 8000",
        container={
            "ports": [{"containerPort": 8000}],
            "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        },
    )
    spec["metadata"]["labels"] = {"app": "web"}
    core.create_namespaced_pod(node_namespace, spec)
    service = core.create_namespaced_service(
        node_namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    wait_until(
        lambda: (
            core.read_namespaced_pod("web", node_namespace).status.pod_ip
            and any(
                c.ready
                for c in core.read_namespaced_pod("web", node_namespace).status.container_statuses
                or []
            )
        ),
        timeout=90,
        what="web pod ready",
    )
    url = f"http://{service.spec.cluster_ip}/index.html"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.read().decode().strip()

    assert wait_until(fetch, timeout=30, what=f"GET {url}", interval=1) == "served"
