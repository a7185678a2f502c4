"""vLLM on CPU as the reference for the tuner's KV accounting: small model shapes, one probe run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lorafuse.serving.kv_cache import KvCapacity
from lorafuse.serving.tuning import kv_cache_tokens_for_budget, read_model_shape

PROBE_SCRIPT = Path(__file__).with_name("vllm_kv_probe.py")
GIB = 2**30
# vLLM's CPU KV budget (VLLM_CPU_KVCACHE_SPACE) is a whole number of GiB.
KV_BUDGET_GIB = 1

_REPORT = re.compile(
    r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
    r"([\d.,]+)x"
)


@dataclass(frozen=True)
class CpuShape:
    """A small model shape and the engine settings vLLM is started with for it."""

    name: str
    description: str
    arch: str
    overrides: dict = field(default_factory=dict)
    max_model_len: int | None = None  # None: the model's maximum
    max_num_batched_tokens: int = 512
    kv_cache_dtype: str = "auto"


CPU_SHAPES = [
    CpuShape(
        "gqa", "Llama, 4 heads / 2 KV heads, explicit head_dim 32, length 200 (2 blocks)",
        "llama", {"num_key_value_heads": 2, "head_dim": 32}, max_model_len=200,
    ),
    CpuShape(
        "mqa-fp8", "Llama, 4 heads / 1 KV head, head_dim 32, fp8 KV cache",
        "llama", {"num_key_value_heads": 1, "head_dim": 32}, kv_cache_dtype="fp8",
    ),
    CpuShape(
        "mha-gpt2", "GPT-2 names (n_head, n_embd), no KV-head field: 4 KV heads",
        "gpt2",
    ),
    CpuShape(
        "sliding", "Mistral, every layer a 64-token sliding window, 32k positions",
        "mistral", {"sliding_window": 64, "max_position_embeddings": 32768},
    ),
    CpuShape(
        "sliding+full", "Llama, layer_types sliding (64) + full, 8k positions",
        "llama",
        {
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 64,
            "max_position_embeddings": 8192,
        },
    ),
]


@dataclass(frozen=True)
class VllmReport:
    """What vLLM logged for one shape, plus its block count."""

    kv_cache_tokens: int
    max_model_len: int
    max_concurrency: float
    num_blocks: int
    block_size: int


def build_models(root: Path, shapes: list[CpuShape] = CPU_SHAPES) -> dict[str, Path]:
    """Write each shape as a tiny random checkpoint under `root`."""
    from lorafuse.merger.demo.tiny import build_tiny_model

    return {
        shape.name: build_tiny_model(root / shape.name, shape.arch, **shape.overrides)
        for shape in shapes
    }


def run_vllm(
    python: Path, models: dict[str, Path], shapes: list[CpuShape] = CPU_SHAPES,
    kv_budget_gib: int = KV_BUDGET_GIB, timeout: float = 600,
) -> dict[str, VllmReport]:
    """Start vLLM's engine once per shape (one process) and parse the KV size it reports."""
    specs = [
        {
            "name": shape.name,
            "model": str(models[shape.name]),
            "max_model_len": shape.max_model_len,
            "max_num_batched_tokens": shape.max_num_batched_tokens,
            "kv_cache_dtype": shape.kv_cache_dtype,
        }
        for shape in shapes
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(kv_budget_gib),
        # The engine in this process rather than a child: same code, a faster start.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    completed = subprocess.run(
        [str(python), "-I", str(PROBE_SCRIPT), json.dumps(specs)],
        env=env, capture_output=True, text=True, timeout=timeout, cwd="/",
    )
    output = completed.stdout + completed.stderr
    return {shape.name: _parse_section(output, shape.name) for shape in shapes}


def _parse_section(output: str, name: str) -> VllmReport:
    begin = output.find(f"@@probe-begin {name}\n")
    if begin < 0:
        raise RuntimeError(f"vLLM probe never started {name}:\n{output[-3000:]}")
    section = output[begin:]
    error = re.search(rf"@@probe-error {re.escape(name)} (.*)", section)
    end = re.search(rf"@@probe-end {re.escape(name)} (.*)", section)
    if end is None:
        reason = error.group(1) if error else "no result"
        raise RuntimeError(f"vLLM failed on {name}: {reason}\n{section[-3000:]}")
    report = _REPORT.search(section[: end.start()])
    if report is None:
        raise RuntimeError(f"vLLM logged no 'KV cache size' line for {name}")
    details = json.loads(end.group(1))
    return VllmReport(
        kv_cache_tokens=int(report.group(1).replace(",", "")),
        max_model_len=int(report.group(2).replace(",", "")),
        max_concurrency=float(report.group(3).replace(",", "")),
        num_blocks=details["num_blocks"],
        block_size=details["block_size"],
    )


def tuner_prediction(
    model_dir: Path, shape: CpuShape, kv_budget_gib: int = KV_BUDGET_GIB
) -> KvCapacity:
    """What the tuner expects vLLM on CPU to report for `shape` with `kv_budget_gib`."""
    model_shape = read_model_shape(model_dir)
    return kv_cache_tokens_for_budget(
        model_shape,
        kv_budget_gib * GIB,
        max_model_len=shape.max_model_len or model_shape.max_position_embeddings,
        max_num_batched_tokens=shape.max_num_batched_tokens,
        kv_cache_dtype=shape.kv_cache_dtype,
    )
