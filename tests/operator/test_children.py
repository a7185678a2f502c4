"""Rendering of the children: merge Job, vLLM Deployment (both modes), Service, volume."""

from __future__ import annotations

import json

import pytest

from lorafuse.operator.children.adapters import adapters_config_map
from lorafuse.operator.children.common import Images
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.job import merge_job, plan_config_map
from lorafuse.operator.children.service import service
from lorafuse.operator.children.storage import persistent_volume_claim
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec

MERGED = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a--1", "sha256:ab")
ADAPTER = ServingTarget("adapter", Sizing(2048, 16, "set"))


def _job(owner, spec):
    plan = plan_for(spec)
    return merge_job(owner, spec, plan, plan_hash(plan), Images())


def _pod(deployment):
    return deployment["spec"]["template"]["spec"]


def _vllm(owner, spec, serving):
    return _pod(serving_deployment(owner, spec, serving, Images()))["containers"][0]


def _flag(args, name):
    return args[args.index(name) + 1]


def _lora_start(owner, spec, serving):
    """The LoRA options an adapter-mode pod starts with: the --config file's content."""
    config_map = adapters_config_map(owner, spec, serving)
    assert config_map is not None
    (text,) = config_map["data"].values()
    return json.loads(text)


def test_job_runs_one_init_container_per_step_and_publishes_last(owner, spec):
    pod = _job(owner, spec)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "merge", "validate"]
    assert [c["name"] for c in pod["containers"]] == ["publish"]
    assert pod["restartPolicy"] == "Never"


def test_quantize_step_runs_only_when_quantization_is_asked(owner, raw_spec):
    raw_spec["quantization"] = {"method": "fp8"}
    pod = _job(owner, ModelDeploymentSpec.model_validate(raw_spec))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "merge", "quantize", "validate"]


def test_job_steps_read_the_plan_and_write_the_termination_message(owner, spec):
    for container in _job(owner, spec)["spec"]["template"]["spec"]["initContainers"]:
        assert container["command"] == ["lorafuse", "job", container["name"]]
        assert _flag(container["args"], "--plan") == "/plan/plan.json"
        assert _flag(container["args"], "--result-file") == "/dev/termination-log"


def test_job_limits_come_from_the_spec(owner, raw_spec):
    raw_spec["job"] = {"backoffLimit": 0, "activeDeadlineSeconds": 600, "image": "merger:dev"}
    job = _job(owner, ModelDeploymentSpec.model_validate(raw_spec))
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (0, 600)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "merger:dev"


def test_job_steps_get_extra_environment_such_as_a_hub_token(owner, raw_spec):
    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    raw_spec["job"] = {"env": [token]}
    pod = _job(owner, ModelDeploymentSpec.model_validate(raw_spec))["spec"]["template"]["spec"]
    assert all(token in c["env"] for c in pod["initContainers"] + pod["containers"])


def test_plan_config_map_holds_the_plan_the_job_mounts(owner, spec):
    plan = plan_for(spec)
    config_map = plan_config_map(owner, plan, plan_hash(plan))
    assert json.loads(config_map["data"]["plan.json"]) == plan.model_dump(mode="json")
    volumes = _job(owner, spec)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "plan", "configMap": {"name": config_map["metadata"]["name"]}} in volumes


def test_pvc_sources_are_mounted_read_only_where_the_plan_points(owner, spec):
    pod = _job(owner, spec)["spec"]["template"]["spec"]
    mount = next(m for m in pod["initContainers"][0]["volumeMounts"] if m["name"] == "source-0")
    assert mount == {"name": "source-0", "mountPath": "/sources/adapters", "readOnly": True}
    assert {
        "name": "source-0",
        "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True},
    } in pod["volumes"]


def test_children_are_owned_by_the_model_deployment(owner, spec):
    ref = _job(owner, spec)["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "ModelDeployment",
        "support-bot",
        "uid-1234",
        True,
    )


def test_merged_mode_serves_the_artifact_under_the_served_name(owner, spec):
    args = _vllm(owner, spec, MERGED)["args"]
    assert _flag(args, "--model") == "/models/artifacts/a--1"
    assert _flag(args, "--served-model-name") == "support-bot"
    assert "--enable-lora" not in args


def test_merged_mode_verifies_the_digest_before_vllm_starts(owner, spec):
    pod = _pod(serving_deployment(owner, spec, MERGED, Images(operator="op:1")))
    verify = pod["initContainers"][0]
    assert verify["image"] == "op:1"
    assert verify["command"] == ["lorafuse", "job", "verify"]
    assert _flag(verify["args"], "--digest") == "sha256:ab"
    assert _flag(verify["args"], "--artifact") == "/models/artifacts/a--1"


def test_adapter_mode_serves_base_with_the_adapter_under_the_served_name(owner, spec):
    args = _vllm(owner, spec, ADAPTER)["args"]
    assert _flag(args, "--model") == "acme/tiny-llama"
    assert _flag(args, "--revision") == "0123abc"
    assert _flag(args, "--served-model-name") == "support-bot-base"
    assert "--enable-lora" in args
    assert _flag(args, "--config") == "/etc/lorafuse/lora/vllm-lora.yaml"
    lora = _lora_start(owner, spec, ADAPTER)
    assert lora["lora-modules"] == ["support-bot=/sources/adapters/support-v3"]
    assert _flag(args, "--max-lora-rank") == "64"


def test_adapter_mode_names_each_of_several_adapters(owner, raw_spec):
    raw_spec["adapters"].append({"name": "billing", "source": "/models/adapters/billing"})
    lora = _lora_start(owner, ModelDeploymentSpec.model_validate(raw_spec), ADAPTER)
    assert lora["lora-modules"] == [
        "support-v3=/sources/adapters/support-v3",
        "billing=/models/adapters/billing",
    ]
    assert lora["max-loras"] == 2


def test_adapter_mode_has_no_verify_step(owner, spec):
    assert _pod(serving_deployment(owner, spec, ADAPTER, Images()))["initContainers"] == []


def test_sizing_and_gpu_flags_reach_vllm(owner, raw_spec):
    raw_spec["serving"] |= {
        "gpu": {"count": 2},
        "tensorParallelSize": 2,
        "gpuMemoryUtilization": 0.85,
        "extraArgs": ["--enforce-eager"],
    }
    container = _vllm(owner, ModelDeploymentSpec.model_validate(raw_spec), MERGED)
    args = container["args"]
    assert (_flag(args, "--max-model-len"), _flag(args, "--max-num-seqs")) == ("2048", "16")
    assert _flag(args, "--tensor-parallel-size") == "2"
    assert _flag(args, "--gpu-memory-utilization") == "0.85"
    assert args[-1] == "--enforce-eager"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_vllm_defaults_apply_when_sizing_is_left_open(owner, spec):
    open_sizing = ServingTarget("merged", Sizing(None, None, "no GPU"), "/models/a", "sha256:ab")
    args = _vllm(owner, spec, open_sizing)["args"]
    assert "--max-model-len" not in args and "--max-num-seqs" not in args


def test_no_gpu_requested_means_no_gpu_resources_or_flags(owner, raw_spec):
    raw_spec["serving"]["gpu"] = {"count": 0}
    container = _vllm(owner, ModelDeploymentSpec.model_validate(raw_spec), MERGED)
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert "--gpu-memory-utilization" not in container["args"]


def test_startup_probe_allows_the_configured_load_time(owner, raw_spec):
    raw_spec["serving"]["probes"] = {"startupTimeoutSeconds": 900, "periodSeconds": 15}
    probe = _vllm(owner, ModelDeploymentSpec.model_validate(raw_spec), MERGED)["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 900


def test_rollout_never_takes_a_ready_pod_away_first(owner, spec):
    deployment = serving_deployment(owner, spec, MERGED, Images())
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_model_volume_is_read_only_in_serving_pods(owner, spec):
    pod = _pod(serving_deployment(owner, spec, MERGED, Images()))
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["readOnly"] is True
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True


def test_existing_claim_is_used_and_no_claim_is_created(owner, raw_spec):
    raw_spec["storage"] = {"existingClaim": "shared-models"}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    assert persistent_volume_claim(owner, spec) is None
    models = next(
        v for v in _job(owner, spec)["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
    )
    assert models["persistentVolumeClaim"]["claimName"] == "shared-models"


def test_created_claim_has_the_requested_size_and_class(owner, raw_spec):
    raw_spec["storage"] = {"size": "20Gi", "storageClassName": "fast"}
    claim = persistent_volume_claim(owner, ModelDeploymentSpec.model_validate(raw_spec))
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast"


def test_service_selects_the_serving_pods(owner, spec):
    front = service(owner, spec)
    deployment = serving_deployment(owner, spec, MERGED, Images())
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert front["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("name", ["a" * 63, "support-bot"])
def test_child_names_stay_within_63_characters(name):
    from lorafuse.operator import naming

    for child in (
        naming.job_name(name, "f" * 16),
        naming.deployment_name(name),
        naming.plan_config_map_name(name, "f" * 16),
        naming.claim_name(name),
    ):
        assert len(child) <= 63


# --- credentials, defaults, probes, rollout, adapter mode ----------------------------------


def _with(raw_spec, **sections) -> ModelDeploymentSpec:
    for section, values in sections.items():
        raw_spec[section] = {**raw_spec.get(section, {}), **values}
    return ModelDeploymentSpec.model_validate(raw_spec)


HUB_TOKEN = {
    "name": "HF_TOKEN",
    "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}},
}


def test_the_hub_token_reaches_every_job_step(owner, raw_spec):
    spec = _with(raw_spec, credentials={"secretName": "hub"})
    job = _job(owner, spec)["spec"]["template"]["spec"]
    for container in job["initContainers"] + job["containers"]:
        assert HUB_TOKEN in container["env"]


def test_the_hub_token_reaches_vllm_in_adapter_mode_only(owner, raw_spec):
    spec = _with(raw_spec, credentials={"secretName": "hub"})
    assert HUB_TOKEN in _vllm(owner, spec, ADAPTER)["env"]
    assert HUB_TOKEN not in _vllm(owner, spec, MERGED)["env"]


def test_job_steps_without_resources_get_the_operators_default_requests(owner, spec):
    for container in _job(owner, spec)["spec"]["template"]["spec"]["containers"]:
        assert container["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"}}


def test_probe_timeouts_default_to_at_least_five_seconds_and_are_configurable(owner, raw_spec):
    vllm = _vllm(owner, ModelDeploymentSpec.model_validate(raw_spec), MERGED)
    assert vllm["readinessProbe"]["timeoutSeconds"] >= 5
    assert vllm["livenessProbe"]["timeoutSeconds"] >= 5
    spec = _with(raw_spec, serving={"probes": {"livenessTimeoutSeconds": 30}})
    assert _vllm(owner, spec, MERGED)["livenessProbe"]["timeoutSeconds"] == 30


def test_the_rollout_strategy_is_configurable_for_a_full_gpu_pool(owner, raw_spec):
    spec = _with(raw_spec, serving={"rollout": {"maxSurge": 0, "maxUnavailable": "50%"}})
    strategy = serving_deployment(owner, spec, MERGED, Images())["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": "50%"}


def test_adapter_mode_gets_a_writable_hub_cache(owner, spec):
    pod = _pod(serving_deployment(owner, spec, ADAPTER, Images()))
    assert {"name": "hf-cache", "emptyDir": {}} in pod["volumes"]
    vllm = pod["containers"][0]
    assert {"name": "HF_HOME", "value": "/cache/hf"} in vllm["env"]
    assert {"name": "hf-cache", "mountPath": "/cache"} in vllm["volumeMounts"]


def test_adapter_mode_fetches_hub_adapters_at_their_revision(owner, raw_spec):
    raw_spec["adapters"] = [{"name": "a", "source": "hf://acme/support@4f2c1e9"}]
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    pod = _pod(serving_deployment(owner, spec, ADAPTER, Images()))
    (fetch,) = pod["initContainers"]
    cached = "/cache/adapters/acme--support--4f2c1e9"
    assert fetch["args"] == ["acme/support", "4f2c1e9", cached]
    args = pod["containers"][0]["args"]
    assert _lora_start(owner, spec, ADAPTER)["lora-modules"] == [f"support-bot={cached}"]
    assert _flag(args, "--revision") == "0123abc"  # the base: pinned as given
