"""The CustomResourceDefinitions: ModelDeployment (from the pydantic models) and kopf's peerings."""

from __future__ import annotations

from typing import Any

from lorafuse.operator.schema import PRESERVE, structural_schema
from lorafuse.operator.spec import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Mode", "type": "string", "jsonPath": ".status.servingMode"},
    {"name": "Quant", "type": "string", "jsonPath": ".spec.quantization.method"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.serving.readyReplicas"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# `kubectl scale mdep` and autoscalers (an HPA or KEDA aimed at the ModelDeployment) read
# and write the serving replicas through this; the selector is the serving pods'.
SCALE = {
    "specReplicasPath": ".spec.serving.replicas",
    "statusReplicasPath": ".status.serving.replicas",
    "labelSelectorPath": ".status.serving.selector",
}

# kopf keeps its leader election ("peering") in these; a replica that sees a peer with a
# higher priority pauses, so of two operator replicas one works and one waits.
PEERING_GROUP = "kopf.dev"


def model_deployment_crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": "Base model + LoRA adapters, merged (or not) and served with vLLM.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(ModelDeploymentSpec),
            "status": structural_schema(ModelDeploymentStatus, defaults=False),
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["lorafuse"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}, "scale": SCALE},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    """kopf's KopfPeering (namespaced) and ClusterKopfPeering, as its documentation gives them."""
    return [
        _peering_crd("ClusterKopfPeering", "Cluster"),
        _peering_crd("KopfPeering", "Namespaced"),
    ]


def _peering_crd(kind: str, scope: str) -> dict[str, Any]:
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{PEERING_GROUP}"},
        "spec": {
            "group": PEERING_GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"status": {"type": "object", PRESERVE: True}},
                        }
                    },
                }
            ],
        },
    }


def all_crds(peering: bool = True) -> list[dict[str, Any]]:
    return [model_deployment_crd(), *(peering_crds() if peering else [])]
