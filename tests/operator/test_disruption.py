"""The PodDisruptionBudget: rendered for two or more serving pods, in the version served."""

from __future__ import annotations

from lorafuse.operator.children.common import ServedApis
from lorafuse.operator.children.desired import unwanted_children
from lorafuse.operator.children.disruption import pod_disruption_budget
from lorafuse.operator.spec import ModelDeploymentSpec

V1BETA1 = ServedApis(pod_disruption_budget="policy/v1beta1")


def _spec(raw_spec, **serving):
    raw_spec["serving"] |= serving
    return ModelDeploymentSpec.model_validate(raw_spec)


def test_a_single_serving_pod_gets_no_budget(owner, spec):
    assert pod_disruption_budget(owner, spec, ServedApis()) is None


def test_several_replicas_get_a_budget_of_one_unavailable_pod(owner, raw_spec):
    pdb = pod_disruption_budget(owner, _spec(raw_spec, replicas=3), ServedApis())
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "lorafuse.dev/deployment": "support-bot",
                "lorafuse.dev/component": "serving",
            }
        },
    }


def test_max_unavailable_is_configurable(owner, raw_spec):
    spec = _spec(raw_spec, replicas=4, disruptionBudget={"maxUnavailable": "50%"})
    assert pod_disruption_budget(owner, spec, ServedApis())["spec"]["maxUnavailable"] == "50%"


def test_the_autoscaler_minimum_decides_not_the_replicas(owner, raw_spec):
    one = _spec(raw_spec, replicas=5, autoscaling={"minReplicas": 1, "maxReplicas": 5})
    two = _spec(raw_spec, replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 5})
    assert pod_disruption_budget(owner, one, ServedApis()) is None
    assert pod_disruption_budget(owner, two, ServedApis()) is not None


def test_the_budget_uses_the_version_the_cluster_serves(owner, raw_spec):
    spec = _spec(raw_spec, replicas=2)
    assert pod_disruption_budget(owner, spec, ServedApis())["apiVersion"] == "policy/v1"
    assert pod_disruption_budget(owner, spec, V1BETA1)["apiVersion"] == "policy/v1beta1"


def test_scaling_down_to_one_pod_removes_the_budget(owner, spec):
    assert ("PodDisruptionBudget", "policy/v1beta1", "support-bot-vllm") in unwanted_children(
        owner, spec, V1BETA1
    )
