"""vLLM's --max-model-len / --max-num-seqs for a ModelDeployment: from the spec or the tuner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorafuse.operator.spec import ModelDeploymentSpec, ServingMode


@dataclass(frozen=True)
class Sizing:
    max_model_len: int | None  # None: leave it to vLLM
    max_num_seqs: int | None
    why: str


def size_serving(
    spec: ModelDeploymentSpec, mode: ServingMode, model_shape: dict[str, Any] | None
) -> Sizing:
    """Explicit numbers win; `auto` asks the tuner, which needs the model's shape and a GPU."""
    serving = spec.serving
    explicit_len = None if serving.max_model_len == "auto" else serving.max_model_len
    explicit_seqs = None if serving.max_num_seqs == "auto" else serving.max_num_seqs
    if explicit_len is not None and explicit_seqs is not None:
        return Sizing(explicit_len, explicit_seqs, "maxModelLen and maxNumSeqs set in the spec")
    gpu = serving.gpu
    if gpu.count == 0:
        return Sizing(explicit_len, explicit_seqs, "no GPU requested: vLLM's defaults for auto")
    if model_shape is None:
        return Sizing(
            explicit_len, explicit_seqs, "model shape not known yet: vLLM's defaults for auto"
        )
    from lorafuse.serving.tuning import ModelShape, TuneRequest, tune

    adapters = mode == "adapter"
    request = TuneRequest(
        gpu=gpu.type,
        gpu_memory_gib=gpu.memory_gib,
        gpus=gpu.count,
        tensor_parallel=serving.tensor_parallel_size,
        utilization=serving.gpu_memory_utilization,
        kv_cache_dtype=serving.kv_cache_dtype,
        target_context=serving.target_context,
        target_concurrency=serving.target_concurrency,
        max_model_len=explicit_len,
        max_num_seqs=explicit_seqs,
        enforce_eager="--enforce-eager" in serving.extra_args,
        lora_rank=serving.max_lora_rank if adapters else None,
        max_loras=len(spec.adapters) if adapters else 1,
    )
    result = tune(ModelShape.model_validate(model_shape), request)
    return Sizing(result.max_model_len, result.max_num_seqs, result.explanation)
