"""Storage as a fresh cloud volume looks: `local` PersistentVolumes on root-owned folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import wait_until

from .nodeplane import NODE_NAME

STORAGE_CLASS = "local-e2e"


class Volumes:
    """make() a pre-bound `local` PV + PVC; the kubelet applies fsGroup to these (not hostPath)."""

    def __init__(self, client: kubernetes.client.ApiClient, root: Path) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.storage = kubernetes.client.StorageV1Api(client)
        self.root = root
        self.made: list[str] = []

    def _storage_class(self) -> None:
        try:
            self.storage.create_storage_class(
                {
                    "metadata": {"name": STORAGE_CLASS},
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "WaitForFirstConsumer",
                }
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    def make(self, namespace: str, claim: str, fill: Callable[[Path], None] | None = None) -> Path:
        """A claim `claim` in `namespace`, bound; its folder (filled by `fill`) root-owned 0755."""
        self._storage_class()
        folder = self.root / f"{namespace}-{claim}"
        folder.mkdir(parents=True)
        if fill is not None:
            fill(folder)
        os.chown(folder, 0, 0)
        folder.chmod(0o755)
        pv = f"{namespace}-{claim}"
        node_term = {
            "matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
            ]
        }
        self.core.create_persistent_volume(
            {
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "local": {"path": str(folder)},
                    # Pre-bound: the claim binds at once, the scheduler need not retry.
                    "claimRef": {"namespace": namespace, "name": claim},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [node_term]}},
                },
            }
        )
        self.made.append(pv)
        self.core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": STORAGE_CLASS,
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        )
        wait_until(
            lambda: (
                self.core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase
                == "Bound"
            ),
            timeout=60,
            what=f"claim {namespace}/{claim} Bound",
        )
        return folder

    def delete(self) -> None:
        """Delete the PVs made (their folders go with the session's temporary directory)."""
        for pv in self.made:
            try:
                self.core.delete_persistent_volume(pv)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self.made.clear()
