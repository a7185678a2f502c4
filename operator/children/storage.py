"""The model volume: a PersistentVolumeClaim, unless the spec names an existing one."""

from __future__ import annotations

from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, metadata
from lorafuse.operator.spec import ModelDeploymentSpec


def claim_for(owner: Owner, spec: ModelDeploymentSpec) -> str:
    return spec.storage.existing_claim or naming.claim_name(owner.name)


def persistent_volume_claim(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The model volume, unless the spec names an existing claim."""
    storage = spec.storage
    if storage.existing_claim:
        return None
    body: dict[str, Any] = {
        "accessModes": list(storage.access_modes),
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        body["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, naming.claim_name(owner.name), "storage"),
        "spec": body,
    }
