"""Small pod manifests and waits shared by the harness tests."""

from __future__ import annotations

import kubernetes

from .controlplane import wait_until


def python_pod(name: str, script: str, **spec) -> dict:
    """A run-once pod whose single container runs `python -c script`."""
    container = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": ["python", "-c", script],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def wait_for_phase(core: kubernetes.client.CoreV1Api, namespace: str, name: str, *phases: str):
    """Wait until the pod reaches one of `phases`; return it."""

    def reached():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_until(reached, timeout=60, what=f"pod {name} to reach {'/'.join(phases)}")


def termination_message(pod, container: int = 0) -> str:
    return pod.status.container_statuses[container].state.terminated.message or ""
