"""Tuner vs vLLM on CPU: the KV cache size (tokens) each predicts/reports, per model shape.

    python bench/tune_cpu.py            # needs the venv from scripts/vllm-venv.sh

Prints a Markdown table for docs/benchmarks.md ("Serving tuner").
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

# The vLLM-on-CPU harness is test code (tests/serving/), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafuse.serving.local import find_vllm_python
from tests.serving.vllm_cpu import (  # noqa: E402
    CPU_SHAPES,
    KV_BUDGET_GIB,
    build_models,
    run_vllm,
    tuner_prediction,
)


def main() -> int:
    python = find_vllm_python()
    if python is None:
        print("vLLM CPU venv absent: run scripts/vllm-venv.sh first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as root:
        models = build_models(Path(root))
        started = time.perf_counter()
        reports = run_vllm(python, models)
        seconds = time.perf_counter() - started
        rows = []
        for shape in CPU_SHAPES:
            predicted = tuner_prediction(models[shape.name], shape, KV_BUDGET_GIB)
            reported = reports[shape.name]
            diff = predicted.reported_tokens / reported.kv_cache_tokens - 1
            rows.append(
                f"| {shape.name} | {shape.description} | {reported.max_model_len:,} | "
                f"{predicted.reported_tokens:,} | {reported.kv_cache_tokens:,} | "
                f"{predicted.max_concurrency:,.2f} | {reported.max_concurrency:,.2f} | "
                f"{diff:+.2%} |"
            )
    print(
        f"KV budget VLLM_CPU_KVCACHE_SPACE={KV_BUDGET_GIB} GiB, block size 128; "
        f"{len(CPU_SHAPES)} vLLM engine starts in {seconds:.0f} s"
    )
    print()
    print(
        "| shape | model | max_model_len | tuner tokens | vLLM tokens | tuner concurrency "
        "| vLLM concurrency | difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
