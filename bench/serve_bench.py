"""Serving benchmark: one model served by vLLM as merged, as base + LoRA (r=16, r=64), and as
merged + FP8, started in turn, each under the same closed-loop load.

    python bench/serve_bench.py [--concurrency 1 4 16] [--output-tokens 32]
                                [--requests-per-client 2] [--plot docs/serve-bench.png]
                                [--json FILE] [--configs merged lora-r16 lora-r64 merged-fp8]

The model is SmolLM2-135M-Instruct (`lorafuse demo --real` converts and caches it). The
script makes, under --work (default ~/.cache/lorafuse/bench/serve): the merge of the demo's
trained LoRA, adapters of rank 16 and 64 on every linear layer (random, non-zero: serving
cost depends on the shapes, not the values), and the FP8 quantization of the merge
(`lorafuse quantize --method fp8`). vLLM comes from $LORAFUSE_VLLM_PYTHON or
~/.cache/lorafuse/vllm-venv (scripts/vllm-venv.sh) and listens on 127.0.0.1 only.

Load: N clients (threads), each sending --requests-per-client streamed completions one
after another; fixed prompts, greedy, exactly --output-tokens tokens (ignore_eos). Reported
per configuration and N: output tokens/s and requests/s (over the level's wall time), time
to first token and inter-token latency, p50 and p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lorafuse.serving import local as local_serving

PROMPTS = (
    "Write one sentence about the ocean.",
    "Explain what a compiler does.",
    "List three fruits and their colors.",
    "Describe a quiet morning in a small town.",
    "What makes a good cup of tea?",
    "Summarize why people keep gardens.",
    "Give advice to someone learning to cook.",
    "Describe how rain forms.",
)
SERVED = "model"  # --served-model-name
ADAPTER = "tuned"  # the LoRA module's name
START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path,
                        default=Path("~/.cache/lorafuse/bench/serve").expanduser())
    parser.add_argument("--configs", nargs="+",
                        default=["merged", "lora-r16", "lora-r64", "merged-fp8"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--kv-cache-gib", default="1")
    parser.add_argument("--extra-vllm-args", nargs=argparse.REMAINDER, default=[],
                        help="appended to every vLLM command line (last option)")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


# --- inputs ---------------------------------------------------------------------------------


def lorafuse_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lorafuse", *args], check=True)


def random_adapter(base: Path, out: Path, rank: int) -> Path:
    """A LoRA of `rank` on every linear layer, with non-zero B so it is not a no-op."""
    if (out / "adapter_config.json").is_file():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafuse.merger.demo.tiny import randomize_lora

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank,
                                            target_modules="all-linear"))
    randomize_lora(lora, seed=rank, scale=0.01)
    lora.save_pretrained(out)
    return out


def prepare(work: Path, configs: list[str]) -> dict[str, list[str]]:
    """Each configuration's model arguments for vLLM, making the inputs it needs."""
    from lorafuse.merger.demo import real

    work.mkdir(parents=True, exist_ok=True)
    base = real.cached_base()
    demo = work / "demo"
    adapter, _ = real.trained_adapter(base, demo)
    merged = work / "merged"
    if not (merged / "config.json").is_file():
        lorafuse_cli("merge", "--base", str(base), "--adapter", str(adapter), "--out", str(merged))
    models: dict[str, list[str]] = {}
    for name in configs:
        if name == "merged":
            models[name] = ["--model", str(merged)]
        elif name.startswith("lora-r"):
            rank = int(name.removeprefix("lora-r"))
            path = random_adapter(base, work / f"adapter-r{rank}", rank)
            models[name] = ["--model", str(base), "--enable-lora", "--max-loras", "1",
                            "--max-lora-rank", str(rank), "--lora-modules", f"{ADAPTER}={path}"]
        elif name == "merged-fp8":
            fp8 = work / "merged-fp8"
            if not (fp8 / "config.json").is_file():
                lorafuse_cli("quantize", "--model", str(merged), "--method", "fp8",
                             "--out", str(fp8))
            models[name] = ["--model", str(fp8)]
        else:
            raise SystemExit(f"unknown configuration {name!r}")
    return models


# --- load -----------------------------------------------------------------------------------


@dataclass
class RequestTiming:
    ttft_s: float
    gaps_s: list[float] = field(default_factory=list)  # between streamed tokens
    tokens: int = 0


def stream_completion(port: int, model: str, prompt: str, tokens: int) -> RequestTiming:
    """One streamed greedy completion; the arrival time of every token chunk."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    arrivals = []
    for raw in response:  # server-sent events, one `data:` line per chunk
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        if json.loads(line[5:])["choices"][0]["text"]:
            arrivals.append(time.perf_counter())
    connection.close()
    if not arrivals:
        raise RuntimeError("no tokens streamed")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return RequestTiming(ttft_s=arrivals[0] - started, gaps_s=gaps, tokens=tokens)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_level(port: int, model: str, clients: int, per_client: int, tokens: int) -> dict:
    """`clients` threads, each sending `per_client` requests in turn (a closed loop)."""
    def client(index: int) -> list[RequestTiming]:
        return [stream_completion(port, model, PROMPTS[(index + k) % len(PROMPTS)], tokens)
                for k in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        timings = [t for batch in pool.map(client, range(clients)) for t in batch]
    wall = time.perf_counter() - started
    ttft = [t.ttft_s for t in timings]
    gaps = [g for t in timings for g in t.gaps_s]
    return {"clients": clients, "requests": len(timings), "wall_s": wall,
            "output_tokens_per_s": sum(t.tokens for t in timings) / wall,
            "requests_per_s": len(timings) / wall,
            "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
            "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
            "load_average": os.getloadavg()[0]}


def vllm_args(model_args: list[str], port: int, args) -> list[str]:
    return [*model_args, "--served-model-name", SERVED, "--host", "127.0.0.1", "--port",
            str(port), "--dtype", "bfloat16", "--max-model-len", "512", "--max-num-seqs",
            str(max(args.concurrency)), "--enforce-eager", *args.extra_vllm_args]


def bench_config(name: str, model_args: list[str], python: Path, args) -> dict:
    port = local_serving.free_port()
    log_path = args.work / "logs" / f"{name}.log"
    env = {"VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    started = time.perf_counter()
    server = local_serving.start_vllm(python, vllm_args(model_args, port, args), log_path, env)
    result: dict = {"config": name, "levels": []}
    try:
        local_serving.wait_ready(server, START_TIMEOUT_S)
        result["start_s"] = time.perf_counter() - started
        model = ADAPTER if "--enable-lora" in model_args else SERVED
        stream_completion(port, model, PROMPTS[0], 4)  # warm-up, not counted
        for clients in args.concurrency:
            level = run_level(port, model, clients, args.requests_per_client, args.output_tokens)
            result["levels"].append(level)
            print(f"  {name:<11} N={clients:<3} {level['output_tokens_per_s']:7.1f} tok/s "
                  f"{level['requests_per_s']:6.2f} req/s  TTFT p50 {level['ttft_p50_ms']:7.0f} "
                  f"p99 {level['ttft_p99_ms']:7.0f} ms  ITL p50 {level['itl_p50_ms']:6.0f} "
                  f"p99 {level['itl_p99_ms']:6.0f} ms  load {level['load_average']:.1f}",
                  flush=True)
    except RuntimeError as exc:
        result["error"] = str(exc).splitlines()[0] + " (log: " + str(log_path) + ")"
        print(f"  {name}: {result['error']}", flush=True)
    finally:
        local_serving.stop(server)
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(6, 4))
    for result in results:
        if result["levels"]:
            levels = result["levels"]
            axes.plot([lv["clients"] for lv in levels],
                      [lv["output_tokens_per_s"] for lv in levels], "o-", label=result["config"])
    axes.set(xscale="log", xlabel="concurrent clients", ylabel="output tokens/s",
             title="vLLM (CPU): merged vs base + LoRA")
    axes.set_xticks([lv for lv in sorted({c for r in results for c in
                                          (x["clients"] for x in r["levels"])})])
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.grid(alpha=0.3)
    axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    args = parse_args()
    python = local_serving.find_vllm_python()
    if python is None:
        raise SystemExit("no vLLM: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON")
    models = prepare(args.work, args.configs)
    print(f"load {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs; {args.output_tokens} output "
          f"tokens, {args.requests_per_client} requests per client", flush=True)
    results = [bench_config(name, model_args, python, args) for name, model_args in models.items()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    shutil.rmtree(args.work / "logs" / "tmp", ignore_errors=True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
