"""Adapters without restarts, end to end: a real API server, the operator, real vLLM (CPU).

The operator reaches a pod as in a cluster, at podIP:containerPort. The stand-in node gives
every pod 127.0.0.1 and moves container ports to free host ports, so `PodNetwork` plays
the pod network: it listens on the container port and forwards to the pod's host port."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from lorafuse.serving.local import free_port
from tests.operator.cluster import (
    NAME,
    REAL_VLLM_IMAGE,
    ModelDeployments,
    get_json,
    post_json,
    real_vllm,
    register_images,
    serving_pods,
    tiny_spec,
    vllm_python,
    wait_for,
)

PROMPT = "Please reset my password. Where is my"


class PodNetwork:
    """127.0.0.1:PORT -> the host port the node gave the current pod's container PORT."""

    def __init__(self, port: int, target: Callable[[], int | None]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        port = self.target()
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5) if port else None
        except OSError:
            upstream = None
        if upstream is None:
            client.close()  # as a pod that is not listening: connection closed
            return
        upstream.settimeout(None)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.server.close()


def _pod_status(status: dict) -> list[dict]:
    return (status.get("serving") or {}).get("pods") or []


def test_kubectl_explain_describes_the_new_fields(control_plane, crds):
    def explained(path: str) -> str:
        proc = control_plane.kubectl("explain", path, check=False)
        return proc.stdout if proc.returncode == 0 else ""

    runtime = wait_for(
        lambda: explained("modeldeployments.spec.serving.runtimeAdapters"), 60, "kubectl explain"
    )
    assert "runtime LoRA API" in runtime and "no authentication" in " ".join(runtime.split())
    pods = " ".join(explained("modeldeployments.status.serving.pods").split())
    assert "LoRA adapters each ready serving pod serves" in pods
    assert "adapters <[]string>" in pods and "message <string>" in pods


def test_the_api_server_defaults_runtime_adapters_and_checks_the_type(
    control_plane, namespace, crds
):
    mdeps = ModelDeployments(control_plane, namespace)
    created = mdeps.create("good", tiny_spec())
    assert created["spec"]["serving"]["runtimeAdapters"] is True
    with pytest.raises(ApiException) as caught:
        mdeps.create("bad", tiny_spec(serving={"runtimeAdapters": "yes"}))
    assert caught.value.status == 422 and "spec.serving.runtimeAdapters" in caught.value.body


@pytest.mark.vllm
def test_adding_an_adapter_loads_it_into_the_running_pod(
    control_plane, namespace, node, models_claim, start_operator, tmp_path
):
    from lorafuse.merger.demo.tiny import build_adapter

    claim = node.claim_dir(namespace, models_claim)
    build_adapter(claim / "base", claim / "adapters" / "billing", seed=2)
    engine_env = {
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    register_images(node, real_vllm(str(vllm_python()), engine_env))
    port = free_port()

    def current_pod() -> kubernetes.client.V1Pod | None:
        pods = serving_pods(control_plane, namespace, NAME)
        live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.pod_ip]
        return live[0] if len(live) == 1 else None

    def host_port() -> int | None:
        pod = current_pod()
        return node.port_for(pod.metadata.name, port, namespace) if pod else None

    network = PodNetwork(port, host_port)
    operator = start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    serving = {
        "image": REAL_VLLM_IMAGE,
        "mode": "adapter",
        "port": port,
        "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
        "maxLoraRank": 8,
        "probes": {"periodSeconds": 2},
        "extraArgs": ["--dtype", "float32", "--enforce-eager"],
    }
    support = {"name": "support", "source": "/models/adapters/support"}
    billing = {"name": "billing", "source": "/models/adapters/billing"}
    try:
        mdeps.create(NAME, tiny_spec(serving=serving, adapters=[support]))
        status = mdeps.wait_status(
            NAME,
            lambda s: s.get("phase") == "Serving" and _pod_status(s),
            300,
            "adapter serving with its pod listed",
        )
        (listed,) = _pod_status(status)
        assert listed["adapters"] == [NAME]  # one adapter: under the served name
        pod = current_pod()
        assert pod is not None
        uid, name = pod.metadata.uid, pod.metadata.name
        apps = kubernetes.client.AppsV1Api(control_plane.client)
        generation = apps.read_namespaced_deployment(f"{NAME}-vllm", namespace).metadata.generation

        # Add an adapter: loaded into the same pod, no rollout.
        mdeps.patch_spec(NAME, {"adapters": [support, billing]})
        status = mdeps.wait_status(
            NAME,
            lambda s: [p.get("adapters") for p in _pod_status(s)] == [["billing", "support"]],
            120,
            "both adapters in the pod's status",
        )
        assert _pod_status(status)[0]["name"] == name
        assert status["serving"]["models"] == [f"{NAME}-base", "support", "billing"]
        pod = current_pod()
        assert pod is not None and pod.metadata.uid == uid
        assert pod.status.container_statuses[0].restart_count == 0
        deployment = apps.read_namespaced_deployment(f"{NAME}-vllm", namespace)
        assert deployment.metadata.generation == generation  # the pod template did not change
        served = {
            m["id"] for m in get_json(node.port_for(name, port, namespace), "/v1/models")["data"]
        }
        assert served == {f"{NAME}-base", "support", "billing"}
        request = {"model": "billing", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        billing_text = post_json(host_port() or 0, "/v1/completions", request)["choices"][0]["text"]
        request["model"] = "support"
        assert post_json(host_port() or 0, "/v1/completions", request)["choices"][0]["text"] != (
            billing_text
        )

        # The container restarts: it starts from the file it got when the pod started (this
        # node never refreshes it; a kubelet does, with a delay), and the operator loads the
        # rest once the pod is ready again.
        node.runner(name, namespace).record("vllm").process.signal_group(signal.SIGKILL)

        def restarted_and_synced() -> bool:
            live = current_pod()
            statuses = (live.status.container_statuses or []) if live else []
            if not statuses or statuses[0].restart_count < 1 or not statuses[0].ready:
                return False
            try:
                models = get_json(node.port_for(name, port, namespace), "/v1/models")["data"]
            except OSError:
                return False
            return {m["id"] for m in models} == {f"{NAME}-base", "support", "billing"}

        wait_for(restarted_and_synced, 240, "the restarted container to serve both adapters")
        assert current_pod().metadata.uid == uid  # type: ignore[union-attr]

        # A new pod (here: the old one deleted) starts with the current set from the
        # ConfigMap; the operator has nothing to load into it.
        core = kubernetes.client.CoreV1Api(control_plane.client)
        core.delete_namespaced_pod(name, namespace)

        def replaced() -> str | None:
            live = current_pod()
            if live is None or live.metadata.name == name:
                return None
            ready = any(
                c.type == "Ready" and c.status == "True" for c in live.status.conditions or []
            )
            return live.metadata.name if ready else None

        new_name = wait_for(replaced, 240, "a new ready serving pod")
        models = get_json(node.port_for(new_name, port, namespace), "/v1/models")["data"]
        assert {m["id"] for m in models} == {f"{NAME}-base", "support", "billing"}
        mdeps.wait_status(
            NAME,
            lambda s: (
                [(p["name"], p["adapters"]) for p in _pod_status(s)]
                == [(new_name, ["billing", "support"])]
            ),
            60,
            "the new pod in status",
        )
        assert f"pod {new_name}: loaded" not in operator.output()

        # Remove one: unloaded in place.
        mdeps.patch_spec(NAME, {"adapters": [support, billing][1:]})
        mdeps.wait_status(
            NAME,
            lambda s: [p.get("adapters") for p in _pod_status(s)] == [[NAME]],
            120,
            "one adapter left, under the served name",
        )
        models = get_json(node.port_for(new_name, port, namespace), "/v1/models")["data"]
        assert {m["id"] for m in models} == {f"{NAME}-base", NAME}
        assert current_pod().metadata.name == new_name  # type: ignore[union-attr]
    finally:
        network.close()
