"""The Service in front of the vLLM pods, and the endpoint status shows for it."""

from __future__ import annotations

from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, metadata
from lorafuse.operator.spec import ModelDeploymentSpec


def service(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, naming.service_name(owner.name), "serving"),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector(owner.name, "serving"),
            "ports": [
                {"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def endpoint(owner: Owner, spec: ModelDeploymentSpec) -> str:
    host = f"{naming.service_name(owner.name)}.{owner.namespace}.svc"
    return f"http://{host}:{spec.serving.port}/v1"
