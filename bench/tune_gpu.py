"""Tuner vs vLLM on a real GPU: KV tokens reported, and the largest max_num_seqs that starts.

Needs a CUDA machine with a GPU build of vLLM in `--vllm-python`'s environment (this
project's CPU venv will not do) and lorafuse importable here. Models are built locally
with random weights (no downloads): a small (Llama-3.2-1B shape) and a medium (Llama-3-8B
shape) model, bfloat16.

    python bench/tune_gpu.py --vllm-python /opt/vllm/bin/python --out /tmp/tune-gpu

For each model it runs the tuner for the GPU it finds (memory from torch.cuda.mem_get_info,
the figure vLLM uses), starts vLLM's OpenAI server with the tuner's flags, reads
"GPU KV cache size: N tokens" and "Available KV cache memory", then raises --max-num-seqs
(doubling, then bisecting) to find the largest value that still starts. It prints Markdown
rows for docs/benchmarks.md and writes results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MODELS = {
    # Llama-3.2-1B's shape (tied embeddings, head_dim 64).
    "small-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    # Llama-3-8B's shape.
    "medium-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        max_position_embeddings=8192,
    ),
}
READY = "Application startup complete"
KV_TOKENS = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
KV_MEMORY = re.compile(r"Available KV cache memory: ([\d.]+) GiB")


@dataclass
class Start:
    max_num_seqs: int
    started: bool
    seconds: float
    kv_tokens: int | None
    kv_gib: float | None
    error: str | None


def build_model(name: str, out: Path) -> Path:
    """A random-weight bfloat16 checkpoint of the named shape (built once, then reused)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorafuse.merger.demo.tiny import tiny_config, train_tokenizer

    target = out / name
    if not (target / "config.json").exists():
        fields = dict(MODELS[name])
        config = tiny_config("llama", vocab_size=fields.pop("vocab_size"), **fields)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(target)
        train_tokenizer().save_pretrained(target)
    return target


def start_vllm(python: str, model: Path, args: list[str], log: Path, timeout: float) -> Start:
    """Start the OpenAI server, wait until it is ready or dies, then stop it."""
    seqs = int(args[args.index("--max-num-seqs") + 1])
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--port",
        "18321",
        "--host",
        "127.0.0.1",
        *args,
    ]
    began = time.monotonic()
    with log.open("w") as sink:
        server = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = False
        while time.monotonic() - began < timeout and server.poll() is None:
            time.sleep(2)
            if READY in log.read_text(errors="replace"):
                started = True
                break
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    text = log.read_text(errors="replace")
    tokens, memory = KV_TOKENS.search(text), KV_MEMORY.search(text)
    error = None if started else _last_error(text)
    return Start(
        max_num_seqs=seqs,
        started=started,
        seconds=round(time.monotonic() - began, 1),
        kv_tokens=int(tokens.group(1).replace(",", "")) if tokens else None,
        kv_gib=float(memory.group(1)) if memory else None,
        error=error,
    )


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if "Error" in line or "error" in line]
    return lines[-1][-300:] if lines else "did not become ready in time"


def with_seqs(args: list[str], seqs: int) -> list[str]:
    args = list(args)
    args[args.index("--max-num-seqs") + 1] = str(seqs)
    return args


def largest_seqs_that_start(python, model, args, out, first: Start, limit, starts_left, timeout):
    """Double max_num_seqs from the tuner's value until a start fails, then bisect."""
    good, bad, trials = (first.max_num_seqs if first.started else None), None, [first]
    if good is None:
        return None, trials
    while bad is None and good * 2 <= limit and starts_left > 0:
        trial = start_vllm(
            python,
            model,
            with_seqs(args, good * 2),
            out / f"{model.name}-seqs{good * 2}.log",
            timeout,
        )
        trials.append(trial)
        starts_left -= 1
        good, bad = (good * 2, None) if trial.started else (good, good * 2)
    while bad is not None and bad - good > max(1, good // 8) and starts_left > 0:
        mid = (good + bad) // 2
        trial = start_vllm(
            python, model, with_seqs(args, mid), out / f"{model.name}-seqs{mid}.log", timeout
        )
        trials.append(trial)
        starts_left -= 1
        good, bad = (mid, bad) if trial.started else (good, mid)
    return good, trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="python of a GPU vLLM install")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune-gpu"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--starts-per-model", type=int, default=5, help="vLLM starts per model")
    parser.add_argument("--seqs-limit", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per start")
    options = parser.parse_args()

    import torch

    from lorafuse.serving.tuning import make_request, read_model_shape, tune

    options.out.mkdir(parents=True, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0)
    total_gib = torch.cuda.mem_get_info(0)[1] / 2**30
    results = []
    for name in options.models:
        model = build_model(name, options.out)
        request = make_request(gpu=gpu_name, gpu_memory_gib=total_gib)
        result = tune(read_model_shape(model), request)
        args = result.vllm_args()
        first = start_vllm(
            options.vllm_python, model, args, options.out / f"{name}.log", options.timeout
        )
        largest, trials = largest_seqs_that_start(
            options.vllm_python,
            model,
            args,
            options.out,
            first,
            options.seqs_limit,
            options.starts_per_model - 1,
            options.timeout,
        )
        results.append(
            {
                "model": name,
                "gpu": gpu_name,
                "gpu_memory_gib": round(total_gib, 2),
                "tuner": {
                    "max_model_len": result.max_model_len,
                    "max_num_seqs": result.max_num_seqs,
                    "kv_cache_tokens": result.kv_cache_tokens,
                    "kv_cache_gib": round(result.kv_cache_bytes_per_gpu / 2**30, 2),
                },
                "vllm_args": args,
                "largest_max_num_seqs_started": largest,
                "starts": [asdict(trial) for trial in trials],
            }
        )
        (options.out / "results.json").write_text(json.dumps(results, indent=2))
    print(
        "| model | GPU | tuner KV tokens | vLLM KV tokens | tuner KV GiB | vLLM KV GiB "
        "| tuner max_num_seqs | largest that started |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        first = row["starts"][0]
        print(
            f"| {row['model']} | {row['gpu']} ({row['gpu_memory_gib']} GiB) | "
            f"{row['tuner']['kv_cache_tokens']:,} | {first['kv_tokens'] or 'failed'} | "
            f"{row['tuner']['kv_cache_gib']} | {first['kv_gib'] or '-'} | "
            f"{row['tuner']['max_num_seqs']} | {row['largest_max_num_seqs_started'] or 'none'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
