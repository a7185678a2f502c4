"""The serving tuner: vLLM's max_model_len and max_num_seqs for a model on given GPUs (pure).

`read_model_shape` is the only I/O (config.json and safetensors headers); `tune` and
`kv_cache_tokens_for_budget` compute from a ModelShape alone. The memory model follows
vLLM 0.32's start-up (v1/worker/gpu_worker.py determine_available_memory):

    KV cache = total × utilization − weights − peak activation − non-torch − CUDA graphs

and the KV cache is cut into blocks as in lorafuse.serving.kv_cache. docs/tuning.md
explains every term and where its numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorafuse.errors import UserError, first_error
from lorafuse.serving.gpus import find_gpu
from lorafuse.serving.kv_cache import (
    KV_CACHE_DTYPE_BYTES,
    KvCapacity,
    KvLayout,
    cdiv,
    kv_capacity,
    longest_fitting_len,
)
from lorafuse.serving.model_shape import ModelShape, read_model_shape

__all__ = [
    "ModelShape",
    "TuneRequest",
    "TuneResult",
    "kv_cache_tokens_for_budget",
    "read_model_shape",
    "tune",
]

GIB = 2**30
GPU_BLOCK_SIZE = 16  # vLLM's CacheConfig.DEFAULT_BLOCK_SIZE on CUDA
CPU_BLOCK_SIZE = 128  # vLLM's CPU platform default
# Async scheduling (on by default on GPUs) keeps two batches in flight; sliding-window
# groups reserve blocks for both (VllmConfig.max_in_flight_tokens).
GPU_CONCURRENT_BATCHES = 2

# The allowance beside weights and KV cache, per GPU (docs/tuning.md, "The allowance").
NON_TORCH_BYTES = 1 * GIB  # cuBLAS/attention workspaces, allocator slack
NON_TORCH_BYTES_PARALLEL = 2 * GIB  # plus NCCL and custom all-reduce buffers
CUDA_GRAPH_BYTES = 1 * GIB  # vLLM profiles and subtracts captured-graph memory
# Sampler in the profile run, per (sequence, vocabulary entry): logits in the model dtype
# (2) + float32 copy (4) + probabilities (4) + sorted values (4) + int64 sort indices (8)
# + float32 exponential noise for sampling (4).
SAMPLER_BYTES_PER_LOGIT = 26
# With no target the context must hold at least this (vLLM's own fallback length).
MIN_USEFUL_CONTEXT = 2048
# Without a target context, max_num_seqs is sized for requests (prompt + completion) of
# this many tokens, the order of a chat turn; --target-context replaces it.
TYPICAL_REQUEST_TOKENS = 2048
MAX_GPUS_SEARCHED = 64


class TuneRequest(BaseModel):
    """What to size for; explicit max_model_len / max_num_seqs always win."""

    model_config = ConfigDict(extra="forbid")

    gpu: str | None = None
    gpu_memory_gib: float | None = Field(None, gt=0, le=4096)
    gpus: int = Field(1, ge=1, le=1024)
    tensor_parallel: int | None = Field(None, ge=1, le=1024)  # default: all `gpus`
    utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_dtype: str = "auto"
    target_context: int | None = Field(None, ge=1)
    target_concurrency: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    enforce_eager: bool = False
    lora_rank: int | None = Field(None, ge=1)  # adapter mode: --max-lora-rank
    max_loras: int = Field(1, ge=1)

    @field_validator("kv_cache_dtype")
    @classmethod
    def _known_kv_dtype(cls, value: str) -> str:
        if value != "auto" and value not in KV_CACHE_DTYPE_BYTES:
            known = ", ".join(["auto", *KV_CACHE_DTYPE_BYTES])
            raise ValueError(f"unknown KV cache dtype {value!r}; known: {known}")
        return value


class TuneResult(BaseModel):
    max_model_len: int
    max_num_seqs: int
    kv_cache_tokens: int  # what vLLM should log as "KV cache size: N tokens"
    explanation: str
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_cache_dtype: str
    block_size: int
    num_blocks: int
    kv_cache_bytes_per_gpu: int
    kv_bytes_per_token: int  # per GPU, all layers
    weight_bytes_per_gpu: int
    allowance_bytes_per_gpu: dict[str, int]
    full_length_sequences: int  # requests of max_model_len that fit at once
    warnings: list[str] = Field(default_factory=list)

    def vllm_args(self) -> list[str]:
        """The vLLM server flags that apply this result."""
        args = [
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
        ]
        if self.tensor_parallel_size > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.pipeline_parallel_size > 1:
            args += ["--pipeline-parallel-size", str(self.pipeline_parallel_size)]
        if self.kv_cache_dtype != "auto":
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        return args


def make_request(**fields) -> TuneRequest:
    """A TuneRequest from loose fields; bad values become one UserError line."""
    try:
        return TuneRequest(**fields)
    except ValidationError as exc:
        problem = first_error(exc)
        field = problem.field.split(".")[0] or "request"
        flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
        raise UserError(f"{flag} {problem.value!r}: {problem.message}") from exc


_FLAGS = {"gpu_memory_gib": "--gpu-memory"}


# --- per-token and per-GPU arithmetic -------------------------------------------------


def serving_dtype(shape: ModelShape) -> str:
    """vLLM's dtype "auto": the config's dtype, float32 models served in bfloat16."""
    return "bfloat16" if shape.dtype == "float32" else shape.dtype


def served_weight_bytes(shape: ModelShape) -> int:
    """Weight memory once loaded: float tensors re-cast to the serving dtype unless quantized."""
    if shape.quantization:
        return shape.weight_bytes
    non_float = shape.weight_bytes - shape.float_weight_bytes
    return non_float + shape.float_weight_params * _dtype_bytes(serving_dtype(shape))


def _dtype_bytes(name: str) -> int:
    return KV_CACHE_DTYPE_BYTES[name]


def kv_heads_per_gpu(shape: ModelShape, tensor_parallel: int) -> int:
    """vLLM shards KV heads over TP ranks and replicates them when there are fewer heads."""
    return max(1, shape.num_kv_heads // tensor_parallel)


def kv_layout(
    shape: ModelShape,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    kv_cache_dtype: str = "auto",
    block_size: int = GPU_BLOCK_SIZE,
    in_flight_tokens: int = 0,
) -> KvLayout:
    """The KV cache layout of the busiest GPU (the pipeline stage with the most layers)."""
    dtype = serving_dtype(shape) if kv_cache_dtype == "auto" else kv_cache_dtype
    per_layer = 2 * kv_heads_per_gpu(shape, tensor_parallel) * shape.head_dim
    return KvLayout(
        block_size=block_size,
        token_bytes_per_layer=per_layer * KV_CACHE_DTYPE_BYTES[dtype],
        full_layers=cdiv(shape.num_full_layers, pipeline_parallel),
        sliding_layers=cdiv(shape.num_sliding_layers, pipeline_parallel),
        sliding_window=shape.sliding_window,
        in_flight_tokens=in_flight_tokens,
    )


def kv_cache_tokens_for_budget(
    shape: ModelShape,
    kv_budget_bytes: int,
    *,
    max_model_len: int,
    max_num_batched_tokens: int,
    block_size: int = CPU_BLOCK_SIZE,
    concurrent_batches: int = 1,
    kv_cache_dtype: str = "auto",
    tensor_parallel: int = 1,
) -> KvCapacity:
    """KV capacity for a fixed KV byte budget (vLLM on CPU: VLLM_CPU_KVCACHE_SPACE).

    The defaults are vLLM's CPU platform: 128-token blocks, synchronous scheduling.
    """
    layout = kv_layout(
        shape,
        tensor_parallel=tensor_parallel,
        kv_cache_dtype=kv_cache_dtype,
        block_size=block_size,
        in_flight_tokens=concurrent_batches * max_num_batched_tokens,
    )
    return kv_capacity(layout, kv_budget_bytes, max_model_len)


def vllm_batch_defaults(memory_gib: float, gpu_name: str | None) -> tuple[int, int]:
    """vLLM's OpenAI-server defaults (max_num_batched_tokens, max_num_seqs) for a GPU size."""
    # EngineArgs.get_batch_defaults: larger defaults from 70 GiB (not on A100), more at 160.
    if memory_gib >= 160:
        return 16384, 1024
    if memory_gib >= 70 and "A100" not in (gpu_name or "").upper():
        return 8192, 1024
    return 2048, 256


@dataclass(frozen=True)
class _GpuBudget:
    """How one GPU's memory divides up, for a parallel layout."""

    usable_bytes: int
    weight_bytes: int
    allowance: dict[str, int]
    layout: KvLayout
    profile_seqs: int

    @property
    def kv_bytes(self) -> int:
        return self.usable_bytes - self.weight_bytes - sum(self.allowance.values())


def _activation_bytes(shape: ModelShape, tp: int, batched_tokens: int, seqs: int) -> dict[str, int]:
    """Peak activation of vLLM's profile run: a forward pass of `batched_tokens`, then the
    sampler on one logit row per sequence (gpu_model_runner.profile_run)."""
    act = _dtype_bytes(serving_dtype(shape))
    qkv = (shape.num_attention_heads // tp + 2 * kv_heads_per_gpu(shape, tp)) * shape.head_dim
    # Live at the MLP: residual + hidden (2H), the qkv output, gate_up (2I) + activation (I).
    per_token = 2 * shape.hidden_size + qkv + 3 * shape.intermediate_size // tp
    forward = batched_tokens * per_token * act
    sampler = min(seqs, batched_tokens) * shape.vocab_size * SAMPLER_BYTES_PER_LOGIT
    return {"activation_forward": forward, "activation_sampler": sampler}


def _lora_bytes(shape: ModelShape, request: TuneRequest, tp: int, pp: int) -> int:
    """Adapter slots vLLM preallocates with --enable-lora: A and B for each linear layer."""
    if not request.lora_rank:
        return 0
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    in_plus_out = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    per_layer = request.lora_rank * in_plus_out * _dtype_bytes(serving_dtype(shape))
    return request.max_loras * per_layer * cdiv(shape.num_layers, pp) // tp


def _gpu_budget(
    shape: ModelShape, request: TuneRequest, memory_bytes: int, tp: int, pp: int,
    batched_tokens: int, seqs_cap: int,
) -> _GpuBudget:
    allowance = _activation_bytes(shape, tp, batched_tokens, seqs_cap)
    allowance["non_torch"] = NON_TORCH_BYTES_PARALLEL if tp * pp > 1 else NON_TORCH_BYTES
    allowance["cuda_graphs"] = 0 if request.enforce_eager else CUDA_GRAPH_BYTES
    if request.lora_rank:
        allowance["lora_slots"] = _lora_bytes(shape, request, tp, pp)
    layout = kv_layout(
        shape,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        kv_cache_dtype=request.kv_cache_dtype,
        in_flight_tokens=GPU_CONCURRENT_BATCHES * batched_tokens,
    )
    return _GpuBudget(
        usable_bytes=int(memory_bytes * request.utilization),
        weight_bytes=cdiv(served_weight_bytes(shape), tp * pp),
        allowance=allowance,
        layout=layout,
        profile_seqs=seqs_cap,
    )


# --- choosing the numbers -------------------------------------------------------------


@dataclass(frozen=True)
class _Hardware:
    name: str
    memory_bytes: int
    tp: int
    pp: int


def tune(shape: ModelShape, request: TuneRequest) -> TuneResult:
    """max_model_len, max_num_seqs and the KV budget vLLM will report; UserError if it can't fit."""
    hardware = _hardware(shape, request)
    memory_gib = hardware.memory_bytes / GIB
    default_batched, default_seqs = vllm_batch_defaults(memory_gib, request.gpu)
    batched = request.max_num_batched_tokens or default_batched
    seqs_cap = request.max_num_seqs or request.target_concurrency or default_seqs
    budget = _gpu_budget(
        shape, request, hardware.memory_bytes, hardware.tp, hardware.pp, batched, seqs_cap
    )

    required_len = _required_len(shape, request)
    if not _fits(budget, required_len, 1):
        raise UserError(_refusal(shape, request, hardware, budget, required_len, batched, seqs_cap))

    max_model_len = _choose_max_model_len(shape, request, budget)
    capacity = kv_capacity(budget.layout, budget.kv_bytes, max_model_len)
    max_num_seqs = _choose_max_num_seqs(request, budget, max_model_len, seqs_cap)
    warnings = _warnings(shape, request, hardware, capacity, max_num_seqs, batched, seqs_cap)
    result = TuneResult(
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_tokens=capacity.reported_tokens,
        explanation="",
        max_num_batched_tokens=batched,
        gpu_memory_utilization=request.utilization,
        tensor_parallel_size=hardware.tp,
        pipeline_parallel_size=hardware.pp,
        kv_cache_dtype=request.kv_cache_dtype,
        block_size=budget.layout.block_size,
        num_blocks=capacity.num_blocks,
        kv_cache_bytes_per_gpu=budget.kv_bytes,
        kv_bytes_per_token=budget.layout.token_bytes,
        weight_bytes_per_gpu=budget.weight_bytes,
        allowance_bytes_per_gpu=dict(budget.allowance),
        full_length_sequences=capacity.full_length_sequences,
        warnings=warnings,
    )
    result.explanation = _explain(shape, request, hardware, budget, capacity, result)
    return result


def _hardware(shape: ModelShape, request: TuneRequest) -> _Hardware:
    if request.gpu_memory_gib is not None:
        name, memory_bytes = request.gpu or "GPU", int(request.gpu_memory_gib * GIB)
    elif request.gpu:
        gpu = find_gpu(request.gpu)
        name, memory_bytes = gpu.name, gpu.memory_bytes
    else:
        raise UserError("--gpu or --gpu-memory: one is required")
    tp = request.tensor_parallel or request.gpus
    if request.gpus % tp:
        raise UserError(f"--tensor-parallel {tp}: must divide --gpus {request.gpus}")
    _check_tensor_parallel(shape, tp)
    pp = request.gpus // tp
    if pp > shape.num_layers:
        raise UserError(
            f"--gpus {request.gpus}: {pp} pipeline stages for {shape.num_layers} layers"
        )
    return _Hardware(name, memory_bytes, tp, pp)


def _check_tensor_parallel(shape: ModelShape, tp: int) -> None:
    if not _valid_tensor_parallel(shape, tp):
        raise UserError(
            f"--tensor-parallel {tp}: must divide the {shape.num_attention_heads} attention "
            f"heads and divide or be a multiple of the {shape.num_kv_heads} KV heads"
        )


def _valid_tensor_parallel(shape: ModelShape, tp: int) -> bool:
    kv = shape.num_kv_heads
    heads_ok = shape.num_attention_heads % tp == 0
    return heads_ok and (kv % tp == 0 if kv >= tp else tp % kv == 0)


def _required_len(shape: ModelShape, request: TuneRequest) -> int:
    """The context one request must reach for the configuration to be worth starting."""
    positions = shape.max_position_embeddings
    if request.max_model_len is not None:
        if request.max_model_len > positions:
            raise UserError(
                f"--max-model-len {request.max_model_len}: above the model's maximum of "
                f"{positions} positions"
            )
        return request.max_model_len
    if request.target_context is not None:
        return min(request.target_context, positions)
    return min(MIN_USEFUL_CONTEXT, positions)


def _fits(budget: _GpuBudget, max_model_len: int, sequences: int) -> bool:
    if budget.weight_bytes > budget.usable_bytes or budget.kv_bytes <= 0:
        return False
    capacity = kv_capacity(budget.layout, budget.kv_bytes, max_model_len)
    return capacity.full_length_sequences >= sequences


def _choose_max_model_len(shape: ModelShape, request: TuneRequest, budget: _GpuBudget) -> int:
    if request.max_model_len is not None:
        return request.max_model_len
    positions = shape.max_position_embeddings
    if request.target_context is not None:
        return min(request.target_context, positions)
    # The longest context (up to the model's) at which the wanted requests all fit whole;
    # with no concurrency asked for, context comes first: one request of it must fit.
    wanted = request.max_num_seqs or request.target_concurrency or 1
    fitting = longest_fitting_len(budget.layout, budget.kv_bytes, wanted, positions)
    if fitting == 0:
        raise UserError(f"{wanted} concurrent requests: the KV cache cannot hold one block each")
    return fitting


def _choose_max_num_seqs(
    request: TuneRequest, budget: _GpuBudget, max_model_len: int, seqs_cap: int
) -> int:
    if request.max_num_seqs:
        return request.max_num_seqs
    if request.target_concurrency:
        return request.target_concurrency
    # With a target context every request may be that long: all admitted ones fit whole.
    # Otherwise size for typical requests, not the worst case, or a long context would
    # throttle every short request.
    per_request = max_model_len
    if not request.target_context:
        per_request = min(max_model_len, TYPICAL_REQUEST_TOKENS)
    fitting = kv_capacity(budget.layout, budget.kv_bytes, per_request).full_length_sequences
    return max(1, min(seqs_cap, fitting))


def smallest_gpu_count(
    shape: ModelShape, request: TuneRequest, memory_bytes: int, max_model_len: int,
    sequences: int, batched_tokens: int, seqs_cap: int,
) -> int | None:
    """The fewest GPUs (tensor parallel) holding `sequences` requests of `max_model_len`."""
    for count in range(1, MAX_GPUS_SEARCHED + 1):
        if not _valid_tensor_parallel(shape, count):
            continue
        budget = _gpu_budget(shape, request, memory_bytes, count, 1, batched_tokens, seqs_cap)
        if _fits(budget, max_model_len, sequences):
            return count
    return None


def _refusal(
    shape: ModelShape, request: TuneRequest, hardware: _Hardware, budget: _GpuBudget,
    required_len: int, batched: int, seqs_cap: int,
) -> str:
    where = f"{request.gpus} × {hardware.name}"
    usable = f"{_gib(budget.usable_bytes)} GiB usable per GPU ({request.utilization:g} utilization)"
    if budget.weight_bytes > budget.usable_bytes:
        reason = f"weights alone need {_gib(budget.weight_bytes)} GiB per GPU, {usable}"
    else:
        reason = (
            f"after weights ({_gib(budget.weight_bytes)} GiB) and the activation/CUDA-graph "
            f"allowance ({_gib(sum(budget.allowance.values()))} GiB), {usable} leaves "
            f"{_gib(max(budget.kv_bytes, 0))} GiB of KV cache, less than one {required_len}-token "
            f"request needs ({_gib(_request_bytes(budget.layout, required_len))} GiB)"
        )
    count = smallest_gpu_count(
        shape, request, hardware.memory_bytes, required_len, 1, batched, seqs_cap
    )
    hint = (
        f"the smallest GPU count that fits is {count} (--gpus {count})"
        if count
        else f"it does not fit on {MAX_GPUS_SEARCHED} of these GPUs"
    )
    return f"model does not fit on {where}: {reason}; {hint}"


def _request_bytes(layout: KvLayout, max_model_len: int) -> int:
    # One request's blocks plus the null block vLLM keeps back.
    return (layout.blocks_per_request(max_model_len) + 1) * layout.bytes_per_block()


def _warnings(
    shape: ModelShape, request: TuneRequest, hardware: _Hardware, capacity: KvCapacity,
    max_num_seqs: int, batched: int, seqs_cap: int,
) -> list[str]:
    warnings = []
    if request.target_context and request.target_context > shape.max_position_embeddings:
        warnings.append(
            f"target context {request.target_context} is above the model's "
            f"{shape.max_position_embeddings} positions; using {shape.max_position_embeddings}"
        )
    useful = min(MIN_USEFUL_CONTEXT, shape.max_position_embeddings)
    if not request.max_model_len and not request.target_context and capacity.max_model_len < useful:
        warnings.append(
            f"to hold {max_num_seqs} requests at once the context is only "
            f"{capacity.max_model_len} tokens"
        )
    fitting = capacity.full_length_sequences
    asked = request.max_num_seqs or request.target_concurrency
    if asked and max_num_seqs > fitting:
        count = smallest_gpu_count(
            shape, request, hardware.memory_bytes, capacity.max_model_len, max_num_seqs,
            batched, seqs_cap,
        )
        more = f"; {count} GPUs would hold them all" if count else ""
        warnings.append(
            f"only {fitting} of {max_num_seqs} sequences fit at the full {capacity.max_model_len} "
            f"tokens at once; vLLM will queue or preempt when long requests pile up{more}"
        )
    return warnings


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _explain(
    shape: ModelShape, request: TuneRequest, hardware: _Hardware, budget: _GpuBudget,
    capacity: KvCapacity, result: TuneResult,
) -> str:
    layout = budget.layout
    kv_dtype = serving_dtype(shape) if request.kv_cache_dtype == "auto" else request.kv_cache_dtype
    aside = ", ".join(
        f"{name.replace('_', ' ')} {_gib(size)}" for name, size in budget.allowance.items()
    )
    sliding = (
        f" {shape.num_sliding_layers} of {shape.num_layers} layers keep only a "
        f"{shape.sliding_window:,}-token window, so a full-length request holds "
        f"{layout.blocks_per_request(result.max_model_len):,} blocks rather than "
        f"{cdiv(result.max_model_len, layout.block_size) * len(layout.groups()):,}."
        if shape.num_sliding_layers
        else ""
    )
    return (
        f"On {request.gpus} × {hardware.name} ({_gib(hardware.memory_bytes)} GiB as vLLM sees "
        f"it × {request.utilization:g} utilization = {_gib(budget.usable_bytes)} GiB per GPU, "
        f"tensor parallel {hardware.tp}, pipeline parallel {hardware.pp}) the weights take "
        f"{_gib(budget.weight_bytes)} GiB per GPU and {_gib(sum(budget.allowance.values()))} GiB "
        f"is set aside ({aside} GiB; the activations are those of vLLM's start-up profile: "
        f"a forward pass of {result.max_num_batched_tokens:,} batched tokens, then sampling "
        f"{min(budget.profile_seqs, result.max_num_batched_tokens):,} sequences over "
        f"{shape.vocab_size:,} tokens), leaving {_gib(budget.kv_bytes)} GiB for the KV cache. "
        f"A token costs {layout.token_bytes:,} bytes per GPU "
        f"({layout.full_layers + layout.sliding_layers} layers × 2 (K and V) × "
        f"{kv_heads_per_gpu(shape, hardware.tp)} KV heads × {shape.head_dim} × "
        f"{KV_CACHE_DTYPE_BYTES[kv_dtype]} bytes of {kv_dtype}), so the cache holds "
        f"{capacity.num_blocks:,} blocks of {layout.block_size} tokens.{sliding} "
        f"max_model_len {result.max_model_len:,} is {_len_reason(shape, request, result)}; "
        f"{_plural(capacity.full_length_sequences, 'request')} of that length fit at once, and "
        f"vLLM should report a KV cache of {result.kv_cache_tokens:,} tokens (maximum concurrency "
        f"{capacity.max_concurrency:,.2f}x). max_num_seqs {result.max_num_seqs:,} is "
        f"{_seqs_reason(request, result)}."
    )


def _len_reason(shape: ModelShape, request: TuneRequest, result: TuneResult) -> str:
    if request.max_model_len:
        return "as given"
    if request.target_context:
        return "the target context"
    if result.max_model_len == shape.max_position_embeddings:
        return "the model's maximum"
    return f"the longest that fits (the model allows {shape.max_position_embeddings:,})"


def _seqs_reason(request: TuneRequest, result: TuneResult) -> str:
    if request.max_num_seqs:
        return "as given"
    if request.target_concurrency:
        return "the target concurrency"
    if request.target_context:
        return "how many requests of the target context fit at once"
    if result.max_model_len <= TYPICAL_REQUEST_TOKENS:
        return "how many full-length requests fit at once (capped at vLLM's default)"
    return (
        f"how many {TYPICAL_REQUEST_TOKENS:,}-token requests fit at once (capped at vLLM's "
        "default); pass --target-context for your longest requests to size it for them"
    )
