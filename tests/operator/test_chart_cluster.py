"""The chart on a real kube-apiserver 1.20: accepted as rendered, and its operator pods run."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import kubernetes
import pytest
import yaml

from tests.cluster.controlplane import wait_until
from tests.cluster.images import VENV_BIN, ContainerContext, Launch

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lorafuse"
CRDS = CHART / "crds" / "crds.yaml"


@pytest.fixture(scope="module")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def crds(control_plane) -> None:
    control_plane.kubectl("apply", "-f", str(CRDS))
    for crd in yaml.safe_load_all(CRDS.read_text()):
        name = crd["metadata"]["name"]
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def render(helm: str, namespace: str, *values: str) -> str:
    return subprocess.run(
        [helm, "template", "lf", str(CHART), "--namespace", namespace, *values],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def operator_image(health_ports: dict[str, int]) -> Callable[[ContainerContext], Launch]:
    """The operator image, with the ports its args name moved to the pod's host ports.

    The node runs pods as host processes, so what a pod network namespace would do (two
    replicas both listening on 8080) is done here by rewriting the port numbers. The host
    port of each pod's health endpoint is recorded in `health_ports` by pod name.
    """

    def handler(ctx: ContainerContext) -> Launch:
        args = []
        for arg in ctx.args:
            if arg.startswith("--liveness="):
                port = ctx.port(int(arg.rsplit(":", 1)[1].split("/", 1)[0]))
                health_ports[ctx.pod["metadata"]["name"]] = port
                arg = f"--liveness=http://127.0.0.1:{port}/healthz"
            elif arg.startswith("--metrics-port="):
                arg = f"--metrics-port={ctx.port(int(arg.split('=', 1)[1]))}"
            args.append(arg)
        path = f"{VENV_BIN}:{ctx.env.get('PATH', '/usr/bin:/bin')}"
        return Launch([*(ctx.command or ["lorafuse"]), *args], env={"PATH": path})

    return handler


def healthz_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return response.status


def test_cluster_wide_chart_is_accepted_by_the_api_server(control_plane, namespace, helm, crds):
    manifest = render(helm, namespace)
    result = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest
    )
    applied = {line.split()[0].split("/")[0] for line in result.stdout.splitlines()}
    assert {
        "serviceaccount",
        "clusterrole.rbac.authorization.k8s.io",
        "clusterrolebinding.rbac.authorization.k8s.io",
        "deployment.apps",
        "service",
        "clusterkopfpeering.kopf.dev",
    } <= applied


def test_namespaced_chart_runs_two_peered_operator_replicas(
    control_plane, namespace, node, helm, crds
):
    health_ports: dict[str, int] = {}
    node.images.register("ghcr.io/lorafuse/operator:*", operator_image(health_ports))
    manifest = render(
        helm,
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
    )
    control_plane.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    core = kubernetes.client.CoreV1Api(control_plane.client)
    custom = kubernetes.client.CustomObjectsApi(control_plane.client)

    def running_pods() -> list:
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/instance=lf")
        return [p for p in pods.items if p.status.phase == "Running"]

    wait_until(lambda: len(running_pods()) == 2, timeout=90, what="two operator pods running")

    def peers() -> set[str]:
        peering = custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "lorafuse"
        )
        return set(peering.get("status") or {})

    names = {p.metadata.name for p in running_pods()}
    wait_until(lambda: peers() == names, timeout=60, what=f"peering heartbeats from {names}")
    # kopf's health endpoint answers where the liveness probe looks, on both replicas.
    assert set(health_ports) >= names, "the operator was started without --liveness"
    assert [healthz_status(health_ports[name]) for name in sorted(names)] == [200, 200]
    restarts = [c.restart_count for p in running_pods() for c in p.status.container_statuses]
    assert restarts == [0, 0]
