"""Adapter mode without restarts, without a cluster: the per-pod changes, the rendering that
keeps the pod template still, and which pods the operator talks to."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

from lorafuse.operator.adapter_sync import (
    AdapterChanges,
    ServingPod,
    changes,
    pod_url,
    ready_adapter_pods,
    sync_adapters,
    sync_pod,
)
from lorafuse.operator.children.adapters import adapters_config_map, wanted_adapters
from lorafuse.operator.children.common import Images
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec, PodAdaptersStatus, ServingStatus
from lorafuse.serving.local import free_port
from lorafuse.serving.lora_runtime import LoraRuntime
from tests.serving.test_lora_runtime import adapters, server  # noqa: F401 (fixtures)

ADAPTER = ServingTarget("adapter", Sizing(2048, 16, "set"))
MERGED = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a--1", "sha256:ab")


def _spec(raw_spec, *extra: dict, **serving) -> ModelDeploymentSpec:
    raw_spec["adapters"] += list(extra)
    raw_spec["serving"].update(serving)
    return ModelDeploymentSpec.model_validate(raw_spec)


# --- the changes one pod needs -----------------------------------------------------------


def test_changes_load_the_new_replace_the_moved_and_unload_the_gone():
    loaded = {"a": "/models/a", "b": "/models/b-v1", "old": "/models/old"}
    wanted = {"a": "/models/a", "b": "/models/b-v2", "c": "/models/c"}
    assert changes(wanted, loaded) == AdapterChanges(
        load=(("c", "/models/c"),), replace=(("b", "/models/b-v2"),), unload=("old",)
    )


def test_a_pod_that_serves_the_set_needs_nothing():
    assert changes({"a": "/x"}, {"a": "/x"}).empty
    assert not changes({"a": "/x"}, {}).empty


def test_going_from_one_adapter_to_two_renames_the_first():
    # One adapter is served under the served name; several under their own names.
    assert changes({"support": "/s", "billing": "/b"}, {"support-bot": "/s"}) == AdapterChanges(
        load=(("billing", "/b"), ("support", "/s")), unload=("support-bot",)
    )


def test_wanted_adapters_are_what_the_pod_starts_with(owner, raw_spec):
    spec = _spec(raw_spec, {"name": "billing", "source": "hf://acme/billing@77aa"})
    assert wanted_adapters(owner.name, spec) == {
        "support-v3": "/sources/adapters/support-v3",
        "billing": "/cache/adapters/acme--billing--77aa",  # the init container's fetch
    }
    config_map = adapters_config_map(owner, spec, ADAPTER)
    assert config_map is not None
    started = json.loads(config_map["data"]["vllm-lora.yaml"])["lora-modules"]
    assert dict(m.split("=", 1) for m in started) == wanted_adapters(owner.name, spec)


# --- rendering: the adapter set is not in the pod template --------------------------------


def test_adding_an_adapter_leaves_the_pod_template_unchanged(owner, raw_spec):
    one = ModelDeploymentSpec.model_validate(raw_spec)
    two = _spec(raw_spec, {"name": "billing", "source": "pvc://adapters/billing"})
    before = serving_deployment(owner, one, ADAPTER, Images())
    after = serving_deployment(owner, two, ADAPTER, Images())
    assert after == before  # no rollout
    assert adapters_config_map(owner, two, ADAPTER) != adapters_config_map(owner, one, ADAPTER)


def test_without_runtime_adapters_a_new_adapter_rolls_the_pods(owner, raw_spec):
    one = _spec(raw_spec, runtimeAdapters=False)
    two = _spec(raw_spec, {"name": "billing", "source": "pvc://adapters/billing"})
    before = serving_deployment(owner, one, ADAPTER, Images())
    after = serving_deployment(owner, two, ADAPTER, Images())
    assert before != after
    args = before["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lora-modules" in args and "--config" not in args
    assert adapters_config_map(owner, one, ADAPTER) is None


def test_adapter_pods_allow_runtime_updates_and_read_the_config_map(owner, spec):
    pod = serving_deployment(owner, spec, ADAPTER, Images())["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    volume = {"name": "lora-config", "configMap": {"name": "support-bot-adapters"}}
    assert volume in pod["volumes"]
    mount = {"name": "lora-config", "mountPath": "/etc/lorafuse/lora", "readOnly": True}
    assert mount in vllm["volumeMounts"]
    assert vllm["args"][vllm["args"].index("--config") + 1] == "/etc/lorafuse/lora/vllm-lora.yaml"


def test_merged_pods_have_no_runtime_lora_api(owner, spec):
    vllm = serving_deployment(owner, spec, MERGED, Images())["spec"]["template"]["spec"]
    env = {var["name"] for var in vllm["containers"][0]["env"]}
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert adapters_config_map(owner, spec, MERGED) is None


def test_the_config_map_is_applied_before_the_deployment(owner, spec):
    objects = desired_objects(owner, spec, plan_for(spec), Images(), merge=False, serving=ADAPTER)
    kinds = [o["kind"] for o in objects]
    assert kinds.index("ConfigMap") < kinds.index("Deployment")


# --- which pods, and what an unreachable one shows ----------------------------------------


def _pod(name, mode="adapter", ready=True, ip="10.1.2.3", deleting=False) -> V1Pod:
    status = "True" if ready else "False"
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            annotations={"lorafuse.dev/serving-mode": mode},
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        status=V1PodStatus(pod_ip=ip, conditions=[V1PodCondition(type="Ready", status=status)]),
    )


def test_only_ready_adapter_pods_are_synced():
    pods = [
        _pod("b"),
        _pod("a", ip="fd00::7"),
        _pod("starting", ready=False),
        _pod("merged", mode="merged"),
        _pod("leaving", deleting=True),
        _pod("no-ip", ip=None),
    ]
    assert ready_adapter_pods(pods, 8000) == [
        ServingPod("a", "http://[fd00::7]:8000"),
        ServingPod("b", "http://10.1.2.3:8000"),
    ]
    assert pod_url("10.0.0.1", 9000) == "http://10.0.0.1:9000"


def test_an_unreachable_pod_keeps_what_it_served_and_says_why():
    runtime = LoraRuntime(f"http://127.0.0.1:{free_port()}", list_timeout=2)
    previous = PodAdaptersStatus(name="p", adapters=["support"])
    synced = sync_pod(ServingPod("p", runtime.base_url), {"support": "/s"}, previous, runtime)
    assert synced.adapters == ["support"]
    assert synced.message and "/v1/models" in synced.message


def test_nothing_is_synced_in_merged_mode_or_without_runtime_adapters(owner, raw_spec):
    def no_pods(namespace: str, selector: str) -> list:
        raise AssertionError("no pod should be listed")

    spec = ModelDeploymentSpec.model_validate(raw_spec)
    assert sync_adapters(no_pods, owner, spec, MERGED, None).pods is None
    assert sync_adapters(no_pods, owner, spec, None, None).pods is None
    off = _spec(raw_spec, runtimeAdapters=False)
    assert sync_adapters(no_pods, owner, off, ADAPTER, None).pods is None
    assert (
        sync_adapters(no_pods, owner, spec, MERGED, None).into(ServingStatus()) == ServingStatus()
    )


def test_unreachable_pods_ask_for_a_retry(owner, spec):
    port = free_port()
    listed = []

    def pods(namespace: str, selector: str) -> list:
        listed.append((namespace, selector))
        return [_pod("p", ip="127.0.0.1")]

    def runtime_for(url: str) -> LoraRuntime:
        return LoraRuntime(url, list_timeout=2)

    spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"port": port})})
    synced = sync_adapters(pods, owner, spec, ADAPTER, None, runtime_for)
    assert listed == [("llm", "lorafuse.dev/component=serving,lorafuse.dev/deployment=support-bot")]
    assert synced.retry_after is not None
    assert synced.pods and synced.pods[0].name == "p" and synced.pods[0].message
    assert synced.into(ServingStatus()).pods == synced.pods


# --- one pod, real vLLM on CPU ------------------------------------------------------------


@pytest.mark.vllm
def test_sync_brings_a_real_vllm_in_line_and_reports_what_failed(server, adapters):  # noqa: F811
    runtime = LoraRuntime(server.endpoint.removesuffix("/v1"))
    pod = ServingPod("p", runtime.base_url)
    support, billing = str(adapters["support"]), str(adapters["billing"])

    synced = sync_pod(pod, {"bot": support, "billing": billing}, None, runtime)
    assert synced == PodAdaptersStatus(name="p", adapters=["billing", "bot"])
    assert runtime.loaded() == {"bot": support, "billing": billing}

    # A path the pod cannot read: the rest is still done, and status says what failed.
    wanted = {"bot": billing, "ghost": "/nonexistent/adapter"}
    synced = sync_pod(pod, wanted, synced, runtime)
    assert synced.adapters == ["bot"]
    assert synced.message and "ghost: 404" in synced.message
    assert "No adapter found for /nonexistent/adapter" in synced.message
    assert runtime.loaded() == {"bot": billing}

    # Back to what the server started with.
    assert sync_pod(pod, {"support": support}, synced, runtime).adapters == ["support"]
