"""Adapter mode's LoRA set outside the pod template: a ConfigMap vLLM starts from, no rollout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import Owner, metadata
from lorafuse.operator.serving_target import ServingTarget, lora_modules, vllm_options
from lorafuse.operator.spec import ModelDeploymentSpec
from lorafuse.serving.lora_runtime import RUNTIME_LORA_ENV
from lorafuse.serving.vllm_args import VllmOptions, lora_config_text

VOLUME = "lora-config"
MOUNT = "/etc/lorafuse/lora"
KEY = "vllm-lora.yaml"  # vLLM's --config wants a .yaml name


def runtime_adapters(spec: ModelDeploymentSpec, target: ServingTarget) -> bool:
    """Whether the adapters change in running pods (vLLM's runtime LoRA API), not by a rollout."""
    return target.mode == "adapter" and spec.serving.runtime_adapters


def config_map_name(owner: str) -> str:
    return naming.fit(owner, "-adapters")


def serving_locate(spec: ModelDeploymentSpec) -> Callable[[str], tuple[str, str | None]]:
    """hf:// adapters are fetched at their revision into the pod's cache (vLLM's
    --lora-modules has no revision); the base and other sources are located as usual."""
    fetched = {a.source for a in spec.adapters if a.source.startswith("hf://")}

    def locate(source: str) -> tuple[str, str | None]:
        if source in fetched:
            return naming.adapter_cache_path(source), None
        return naming.serving_ref(source)

    return locate


def pod_options(owner: str, spec: ModelDeploymentSpec, target: ServingTarget) -> VllmOptions:
    """vLLM's options in a serving pod; with runtime adapters the LoRA set is in the file."""
    options = vllm_options(owner, spec, target, locate=serving_locate(spec))
    if runtime_adapters(spec, target):
        options = replace(options, lora_config_file=f"{MOUNT}/{KEY}")
    return options


def wanted_adapters(owner: str, spec: ModelDeploymentSpec) -> dict[str, str]:
    """LoRA name -> path in the serving pod, for every adapter the spec serves."""
    modules = lora_modules(owner, spec, serving_locate(spec))
    return {name: path for name, _, path in (module.partition("=") for module in modules)}


def adapters_config_map(
    owner: Owner, spec: ModelDeploymentSpec, target: ServingTarget
) -> dict[str, Any] | None:
    """The file vLLM starts from (--config): a new or restarted pod serves the current set."""
    if not runtime_adapters(spec, target):
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner.name), "serving"),
        "data": {KEY: lora_config_text(pod_options(owner.name, spec, target))},
    }


def pod_env() -> list[dict[str, Any]]:
    """Turns on vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter."""
    return [{"name": RUNTIME_LORA_ENV, "value": "True"}]


def pod_volume(owner: Owner) -> dict[str, Any]:
    return {"name": VOLUME, "configMap": {"name": config_map_name(owner.name)}}


def pod_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": MOUNT, "readOnly": True}
