"""Scaling: the CRD's scale subresource, and the HorizontalPodAutoscaler on a vLLM metric."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorafuse.operator.children.autoscaler import horizontal_pod_autoscaler
from lorafuse.operator.children.common import Images
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.desired import desired_objects, unwanted_children
from lorafuse.operator.crd import model_deployment_crd
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec

MERGED = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a--1", "sha256:ab")


def _autoscaled(raw_spec, **autoscaling):
    raw_spec["serving"]["autoscaling"] = {"maxReplicas": 4, **autoscaling}
    return ModelDeploymentSpec.model_validate(raw_spec)


def _metric(hpa):
    return hpa["spec"]["metrics"][0]["pods"]


def test_the_crd_scales_the_serving_replicas_by_the_serving_pods_selector():
    version = model_deployment_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.serving.replicas",
        "statusReplicasPath": ".status.serving.replicas",
        "labelSelectorPath": ".status.serving.selector",
    }


def test_the_deployment_gets_the_spec_replicas_without_autoscaling(owner, raw_spec):
    raw_spec["serving"]["replicas"] = 3
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    assert serving_deployment(owner, spec, MERGED, Images())["spec"]["replicas"] == 3


def test_with_autoscaling_the_deployment_leaves_replicas_to_the_autoscaler(owner, raw_spec):
    deployment = serving_deployment(owner, _autoscaled(raw_spec), MERGED, Images())
    assert "replicas" not in deployment["spec"]


def test_no_autoscaler_is_rendered_without_autoscaling(owner, spec):
    assert horizontal_pod_autoscaler(owner, spec) is None


def test_the_autoscaler_targets_the_serving_deployment_between_min_and_max(owner, raw_spec):
    hpa = horizontal_pod_autoscaler(owner, _autoscaled(raw_spec, minReplicas=2))
    assert hpa["apiVersion"] == "autoscaling/v2beta2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "support-bot-vllm",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)


def test_the_default_metric_is_the_queue_length_under_its_adapter_name(owner, raw_spec):
    metric = _metric(horizontal_pod_autoscaler(owner, _autoscaled(raw_spec)))
    assert metric["metric"] == {"name": "vllm_num_requests_waiting"}
    assert metric["target"] == {"type": "AverageValue", "averageValue": "5"}


def test_kv_cache_usage_defaults_to_eighty_percent(owner, raw_spec):
    spec = _autoscaled(raw_spec, metric="vllm:kv_cache_usage_perc")
    metric = _metric(horizontal_pod_autoscaler(owner, spec))
    assert metric["metric"] == {"name": "vllm_kv_cache_usage_perc"}
    assert metric["target"]["averageValue"] == "800m"


def test_the_kv_cache_metric_of_older_vllm_is_accepted(owner, raw_spec):
    spec = _autoscaled(raw_spec, metric="vllm:gpu_cache_usage_perc")
    metric = _metric(horizontal_pod_autoscaler(owner, spec))
    assert metric["metric"] == {"name": "vllm_gpu_cache_usage_perc"}


def test_a_given_target_is_used(owner, raw_spec):
    metric = _metric(horizontal_pod_autoscaler(owner, _autoscaled(raw_spec, target="12")))
    assert metric["target"]["averageValue"] == "12"


def test_min_above_max_is_refused(raw_spec):
    with pytest.raises(ValidationError, match="minReplicas exceeds"):
        _autoscaled(raw_spec, minReplicas=5)


def test_an_unknown_metric_is_refused(raw_spec):
    with pytest.raises(ValidationError):
        _autoscaled(raw_spec, metric="vllm:time_to_first_token_seconds")


def test_the_autoscaler_is_applied_after_the_deployment_it_scales(owner, raw_spec):
    spec = _autoscaled(raw_spec)
    kinds = [
        o["kind"]
        for o in desired_objects(owner, spec, plan_for(spec), Images(), merge=False, serving=MERGED)
    ]
    assert kinds.index("HorizontalPodAutoscaler") > kinds.index("Deployment")


def test_turning_autoscaling_off_removes_the_autoscaler(owner, spec, raw_spec):
    assert ("HorizontalPodAutoscaler", "autoscaling/v2beta2", "support-bot-vllm") in (
        unwanted_children(owner, spec)
    )
    kinds = [kind for kind, _, _ in unwanted_children(owner, _autoscaled(raw_spec))]
    assert "HorizontalPodAutoscaler" not in kinds
