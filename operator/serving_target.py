"""What the vLLM Deployment serves (ServingTarget) and the vLLM options for it, from the spec.

One set of functions for the serving pods and `lorafuse run`: a local run differs only in
the host, the port, where sources are (`locate`) and whether a GPU is there to size for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorafuse.operator import naming
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec, ServingMode
from lorafuse.serving.vllm_args import VllmOptions

# A source -> what vLLM gets for it: a path, or a hub id and its revision.
Locate = Callable[[str], tuple[str, str | None]]
POD_HOST = "0.0.0.0"


@dataclass(frozen=True)
class ServingTarget:
    """What the vLLM Deployment serves: the mode, the artifact (merged) and the sizing."""

    mode: ServingMode
    sizing: Sizing
    artifact_path: str | None = None
    artifact_digest: str | None = None


def served_name(name: str, spec: ModelDeploymentSpec) -> str:
    """The model name clients ask for: spec.serving.servedModelName, else the resource's name."""
    return spec.serving.served_model_name or name


def lora_modules(
    name: str, spec: ModelDeploymentSpec, locate: Locate = naming.serving_ref
) -> list[str]:
    """`name=path` per adapter; a single adapter is served under the served name itself."""
    if len(spec.adapters) == 1:
        names = [served_name(name, spec)]
    else:
        names = [adapter.name for adapter in spec.adapters]
    paths = [locate(adapter.source)[0] for adapter in spec.adapters]
    return [f"{module}={path}" for module, path in zip(names, paths, strict=True)]


def model_names(name: str, spec: ModelDeploymentSpec, mode: ServingMode) -> list[str]:
    """The model names the Service answers to, as status shows them."""
    served = served_name(name, spec)
    if mode == "merged":
        return [served]
    return [f"{served}-base", *(m.split("=", 1)[0] for m in lora_modules(name, spec))]


def vllm_options(
    name: str,
    spec: ModelDeploymentSpec,
    target: ServingTarget,
    *,
    host: str = POD_HOST,
    port: int | None = None,
    locate: Locate = naming.serving_ref,
    gpu_present: bool = True,
) -> VllmOptions:
    """vLLM's options for `target`; port defaults to spec.serving.port."""
    opts = spec.serving
    revision, modules = None, []
    if target.mode == "merged":
        model = target.artifact_path or ""
    else:
        model, pinned = locate(spec.base.source)
        revision = pinned or spec.base.revision
        modules = lora_modules(name, spec, locate)
    with_gpu = gpu_present and opts.gpu.count > 0
    return VllmOptions(
        model=model,
        served_name=served_name(name, spec),
        host=host,
        port=opts.port if port is None else port,
        revision=revision,
        lora_modules=modules,
        max_lora_rank=opts.max_lora_rank,
        max_model_len=target.sizing.max_model_len,
        max_num_seqs=target.sizing.max_num_seqs,
        gpu_memory_utilization=opts.gpu_memory_utilization if with_gpu else None,
        tensor_parallel_size=opts.tensor_parallel_size,
        extra_args=list(opts.extra_args),
    )
