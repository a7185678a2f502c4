"""The PodDisruptionBudget of the serving pods, when there are several to protect."""

from __future__ import annotations

from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, ServedApis, metadata
from lorafuse.operator.spec import ModelDeploymentSpec


def fewest_serving_replicas(spec: ModelDeploymentSpec) -> int:
    """The serving pods there are at least: the autoscaler's minimum, else the replicas."""
    scaling = spec.serving.autoscaling
    return scaling.min_replicas if scaling else spec.serving.replicas


def pod_disruption_budget(
    owner: Owner, spec: ModelDeploymentSpec, apis: ServedApis
) -> dict[str, Any] | None:
    """Drains evict at most maxUnavailable serving pods at a time; None for a single pod,
    which a budget would only keep a node from draining."""
    if fewest_serving_replicas(spec) <= 1:
        return None
    return {
        "apiVersion": apis.pod_disruption_budget,
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, naming.deployment_name(owner.name), "serving"),
        "spec": {
            "maxUnavailable": spec.serving.disruption_budget.max_unavailable,
            "selector": {"matchLabels": naming.selector(owner.name, "serving")},
        },
    }
