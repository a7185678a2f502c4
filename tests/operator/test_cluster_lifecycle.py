"""A ModelDeployment's life on the real control plane: the operator runs as its ServiceAccount,
the node runs the real `lorafuse job` steps on a tiny model and a vLLM stand-in."""

from __future__ import annotations

import threading

import kubernetes
from kubernetes.client.exceptions import ApiException

from tests.operator.cluster import (
    NAME,
    condition,
    get_json,
    ready_pod,
    tiny_spec,
    wait_for,
)


def _serving(status: dict, mode: str) -> bool:
    return status.get("phase") == "Serving" and status.get("servingMode") == mode


def _served_models(control_plane, node, namespace: str, mode: str) -> dict[str, str]:
    pod = ready_pod(control_plane, namespace, NAME, mode)
    listed = get_json(node.port_for(pod.metadata.name, 8000, namespace), "/v1/models")["data"]
    return {model["id"]: model["root"] for model in listed}


def _events(control_plane, namespace: str) -> list[str]:
    core = kubernetes.client.CoreV1Api(control_plane.client)
    items = core.list_namespaced_event(namespace).items
    return [e.reason for e in items if e.involved_object.kind == "ModelDeployment"]


def test_merge_serve_fail_over_switch_modes_and_delete(
    control_plane, namespace, node, mdeps, start_operator
):
    operator = start_operator(priority=100)
    operator.wait_active()
    standby = start_operator(priority=50)  # a second replica: it must wait, not act
    mdeps.create(NAME, tiny_spec())

    # apply -> Job (one init container per step) -> artifact -> Deployment -> Serving
    status = mdeps.wait_status(NAME, lambda s: _serving(s, "merged"), 180, "merged serving")
    artifact = status["artifact"]
    assert artifact["path"].startswith("/models/artifacts/")
    assert artifact["digest"].startswith("sha256:")
    assert (node.claim_dir(namespace, "models") / artifact["path"][len("/models/") :]).is_dir()
    assert status["validation"]["passed"] is True
    assert status["merge"]["state"] == "Succeeded"
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Merged")["status"] == "True"
    assert status["serving"]["endpoint"] == f"http://{NAME}.{namespace}.svc:8000/v1"

    job_pod = (
        kubernetes.client.CoreV1Api(control_plane.client)
        .list_namespaced_pod(namespace, label_selector="lorafuse.dev/component=merge")
        .items[0]
    )
    steps = [(c.name, c.state.terminated.exit_code) for c in job_pod.status.init_container_statuses]
    assert steps == [("fetch", 0), ("merge", 0), ("validate", 0)]

    assert _served_models(control_plane, node, namespace, "merged") == {NAME: artifact["path"]}
    kubernetes.client.CoreV1Api(control_plane.client).read_namespaced_service(NAME, namespace)
    assert {"MergeStarted", "ArtifactPublished", "Serving"} <= set(
        _events(control_plane, namespace)
    )
    metrics = operator.metrics()
    assert (
        f'lorafuse_deployment_phase{{name="{NAME}",namespace="{namespace}",phase="Serving"}} 1.0'
        in metrics
    )
    assert operator.reconciles() > 0 and standby.reconciles() == 0

    # the leader goes away: the standby takes over and does the rest
    operator.stop()
    standby.wait_active()

    # merged -> adapter: the old pod serves until the new one is ready
    ready_counts = _watch_ready_replicas(control_plane, namespace)
    mdeps.patch_spec(NAME, {"serving": {"mode": "adapter"}})
    status = mdeps.wait_status(NAME, lambda s: _serving(s, "adapter"), 120, "adapter serving")
    ready_counts.stop()
    assert min(ready_counts.seen) >= 1
    assert condition(status, "RolledBack")["reason"] == "Requested"
    assert _served_models(control_plane, node, namespace, "adapter") == {
        f"{NAME}-base": "/models/base",
        NAME: "/models/adapters/support",
    }

    # adapter -> merged: the same plan's artifact serves again, without a second merge
    mdeps.patch_spec(NAME, {"serving": {"mode": "merged"}})
    mdeps.wait_status(NAME, lambda s: _serving(s, "merged"), 120, "merged serving again")
    jobs = kubernetes.client.BatchV1Api(control_plane.client).list_namespaced_job(namespace)
    assert len(jobs.items) == 1

    # delete -> the garbage collector removes every child
    mdeps.delete(NAME)
    wait_for(lambda: not _children(control_plane, namespace), 60, "children to be deleted")
    # The rules they run under were enough: nothing they tried was refused.
    assert "Forbidden" not in operator.output() + standby.output()


def _children(control_plane, namespace: str) -> list[str]:
    api = control_plane.client
    selector = f"lorafuse.dev/deployment={NAME}"
    found = []
    for kind, lister in (
        ("job", kubernetes.client.BatchV1Api(api).list_namespaced_job),
        ("deployment", kubernetes.client.AppsV1Api(api).list_namespaced_deployment),
        ("service", kubernetes.client.CoreV1Api(api).list_namespaced_service),
        ("configmap", kubernetes.client.CoreV1Api(api).list_namespaced_config_map),
    ):
        found += [
            f"{kind}/{i.metadata.name}" for i in lister(namespace, label_selector=selector).items
        ]
    return found


class _watch_ready_replicas:  # noqa: N801 (used like a function)
    """Samples the serving Deployment's ready replicas in the background."""

    def __init__(self, control_plane, namespace: str) -> None:
        self.apps = kubernetes.client.AppsV1Api(control_plane.client)
        self.namespace = namespace
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                deployment = self.apps.read_namespaced_deployment(f"{NAME}-vllm", self.namespace)
            except ApiException:
                continue
            self.seen.append(deployment.status.ready_replicas or 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
