"""Small helpers for the end-to-end tests: pod specs under a restricted security context."""

from __future__ import annotations

from typing import Any

import kubernetes

from tests.cluster.controlplane import wait_until

UID = 10001

# The pod-level half of the "restricted" Pod Security Standard, as the merger image needs it.
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def pod(name: str, image: str, script: str, **spec: Any) -> dict[str, Any]:
    """A run-once pod running `sh -c script` in `image` as UID, restricted."""
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "securityContext": RESTRICTED_CONTAINER,
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def finished(core: kubernetes.client.CoreV1Api, namespace: str, name: str, timeout: float = 180):
    """Wait until the pod has Succeeded or Failed; return it."""

    def done():
        p = core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return wait_until(done, timeout=timeout, what=f"pod {name} to finish", interval=0.5)


def logs(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> str:
    """The pod's log, read through the apiserver from the kubelet."""
    return core.read_namespaced_pod_log(name, namespace)
