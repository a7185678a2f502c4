"""The HorizontalPodAutoscaler of the serving Deployment, on a vLLM pod metric."""

from __future__ import annotations

from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, metadata
from lorafuse.operator.spec import ModelDeploymentSpec

HPA_API_VERSION = "autoscaling/v2beta2"  # the newest Kubernetes 1.20 serves


def adapter_metric_name(prometheus_name: str) -> str:
    """The name the Prometheus adapter serves a vLLM metric under: `vllm:x` -> `vllm_x`
    (a colon is not allowed in a custom-metrics API path)."""
    return prometheus_name.replace(":", "_")


def horizontal_pod_autoscaler(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """Scales the serving Deployment between min and max on the per-pod average of the
    metric; None without spec.serving.autoscaling."""
    scaling = spec.serving.autoscaling
    if scaling is None:
        return None
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, naming.deployment_name(owner.name), "serving"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": naming.deployment_name(owner.name),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": adapter_metric_name(scaling.metric)},
                        "target": {"type": "AverageValue", "averageValue": scaling.target_value()},
                    },
                }
            ],
        },
    }
