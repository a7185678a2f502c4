"""The optional Ingress to the serving Service (networking.k8s.io/v1)."""

from __future__ import annotations

from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, metadata
from lorafuse.operator.spec import ModelDeploymentSpec

INGRESS_API_VERSION = "networking.k8s.io/v1"


def ingress(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """Routes host + path to the Service; None without spec.serving.ingress."""
    wanted = spec.serving.ingress
    if wanted is None:
        return None
    backend = {
        "service": {
            "name": naming.service_name(owner.name),
            "port": {"number": spec.serving.port},
        }
    }
    path = {"path": wanted.path, "pathType": "Prefix", "backend": backend}
    body: dict[str, Any] = {"rules": [{"host": wanted.host, "http": {"paths": [path]}}]}
    if wanted.class_name:
        body["ingressClassName"] = wanted.class_name
    if wanted.tls_secret_name:
        body["tls"] = [{"hosts": [wanted.host], "secretName": wanted.tls_secret_name}]
    return {
        "apiVersion": INGRESS_API_VERSION,
        "kind": "Ingress",
        "metadata": metadata(owner, naming.service_name(owner.name), "serving"),
        "spec": body,
    }
