"""The merge at scale: `lorafuse merge` against copying the same files, 1.1B and 7B Llama.

    python bench/merge_scale.py [--sizes 1.1b 7b] [--rounds 3] [--warmup 1]
                                [--plot docs/merge-scale.png] [--json FILE]
                                [--cache-dir DIR] [--delete-inputs]

Writes the random bf16 models (shard by shard; 7B: hidden 4096, 32 layers, intermediate
11008, vocab 32000, about 13.5 GB) and LoRA r=64 adapters under the cache dir once. Then,
per size, after untimed warm-up rounds, each round runs in turn from a cold page cache:
`cp -r` of the model folder; `cp -r` then `sync` of the copied files (lorafuse fsyncs its
output before publishing it, so this is the like-for-like copy); `lorafuse merge`. Reports
wall time and peak RSS (medians) and plots both against model size. Needs about 3x the
largest model free on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from checkpoints import (
    LlamaShape,
    directory_bytes,
    is_complete,
    write_llama_checkpoint,
    write_lora_adapter,
)
from measure import Measurement, evict_from_page_cache, run_measured

GIB = 1024**3
TARGET = 1.5  # merge wall time / durable-copy wall time
SHAPES = {
    "1.1b": LlamaShape(),  # TinyLlama: the folder merge_bench.py also uses
    "7b": LlamaShape(hidden=4096, layers=32, intermediate=11008, vocab=32000, heads=32,
                     kv_heads=32),
}
FOLDERS = {"1.1b": ("llama-1.1b-bf16", "lora-r64-all-linear"),
           "7b": ("llama-7b-bf16", "lora-r64-all-linear-7b")}


def parse_args() -> argparse.Namespace:
    default_cache = os.environ.get("LORAFUSE_BENCH_CACHE", "~/.cache/lorafuse/bench")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(default_cache).expanduser())
    parser.add_argument("--sizes", nargs="+", choices=sorted(SHAPES), default=["1.1b", "7b"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds first (the host's own disk cache, first writes)")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here (needs matplotlib)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--delete-inputs", action="store_true",
                        help="delete the 7B inputs afterwards (13.5 GB)")
    return parser.parse_args()


def ensure_inputs(cache: Path, size: str) -> tuple[Path, Path]:
    base_name, adapter_name = FOLDERS[size]
    base, adapter = cache / base_name, cache / adapter_name
    if not is_complete(base):
        started = time.perf_counter()
        # 2 GB shards: one shard in memory at a time while writing.
        write_llama_checkpoint(base, SHAPES[size], max_shard_size="2GB")
        print(f"wrote {base} in {time.perf_counter() - started:.1f} s", flush=True)
    if not is_complete(adapter):
        write_lora_adapter(adapter, base, SHAPES[size])
        print(f"wrote {adapter}", flush=True)
    return base, adapter


def commands(base: Path, adapter: Path, out: Path) -> dict[str, list[str]]:
    copy = f'cp -r "{base}" "{out}"'
    return {
        "cp": ["/bin/sh", "-c", copy],
        "cp+sync": ["/bin/sh", "-c", f'{copy} && sync "{out}"/*'],
        "lorafuse": [sys.executable, "-m", "lorafuse", "merge", "--base", str(base),
                     "--adapter", str(adapter), "--out", str(out)],
    }


def measure_size(size: str, base: Path, adapter: Path, runs_dir: Path, args) -> list[dict]:
    results = []
    for round_no in range(1 - args.warmup, args.rounds + 1):
        for label, command in commands(base, adapter, runs_dir / "out").items():
            shutil.rmtree(runs_dir / "out", ignore_errors=True)
            evict_from_page_cache(base)  # cold: as a merge Job reading a fresh volume
            evict_from_page_cache(adapter)
            run = run_measured(label, command)
            shutil.rmtree(runs_dir / "out", ignore_errors=True)
            show(size, round_no, run)
            if not run.ok:
                raise SystemExit(f"{label} failed: {run.stderr_tail}")
            if round_no < 1:
                continue
            results.append({"size": size, "round": round_no, "model_bytes": directory_bytes(base),
                            **vars(run)})
    return results


def show(size: str, round_no: int, run: Measurement) -> None:
    name = f"round {round_no}" if round_no > 0 else "warm-up"
    print(f"  {size:>5} {name:<8} {run.label:<9} wall {run.wall_s:7.2f} s  "
          f"cpu {run.cpu_s:7.2f} s  peak RSS {run.peak_rss_bytes / GIB:6.3f} GiB  "
          f"load {run.load_average:4.1f}", flush=True)


def summarize(results: list[dict]) -> dict:
    """Median per size and tool, and merge/copy ratios."""
    from statistics import median

    summary: dict = {}
    for size in dict.fromkeys(r["size"] for r in results):
        rows = [r for r in results if r["size"] == size]
        per_tool = {label: {"wall_s": median(r["wall_s"] for r in rows if r["label"] == label),
                            "peak_rss_bytes": median(r["peak_rss_bytes"] for r in rows
                                                     if r["label"] == label)}
                    for label in dict.fromkeys(r["label"] for r in rows)}
        merge_wall = per_tool["lorafuse"]["wall_s"]
        per_tool["ratio_vs_cp"] = merge_wall / per_tool["cp"]["wall_s"]
        per_tool["ratio_vs_cp_sync"] = merge_wall / per_tool["cp+sync"]["wall_s"]
        per_tool["model_bytes"] = rows[0]["model_bytes"]
        summary[size] = per_tool
        print(f"{size}: model {per_tool['model_bytes'] / GIB:.2f} GiB; merge {merge_wall:.1f} s "
              f"= {per_tool['ratio_vs_cp']:.2f}x cp, {per_tool['ratio_vs_cp_sync']:.2f}x cp+sync "
              f"(target <= {TARGET}x); merge peak RSS "
              f"{per_tool['lorafuse']['peak_rss_bytes'] / GIB:.3f} GiB")
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(summary, key=lambda s: summary[s]["model_bytes"])
    gib = [summary[s]["model_bytes"] / GIB for s in sizes]
    fig, (wall, rss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, style in (("cp", "o--"), ("cp+sync", "s--"), ("lorafuse", "o-")):
        wall.plot(gib, [summary[s][label]["wall_s"] for s in sizes], style, label=label)
        rss.plot(gib, [summary[s][label]["peak_rss_bytes"] / GIB for s in sizes], style,
                 label=label)
    wall.set(xlabel="model size (GiB, bf16)", ylabel="wall time (s)",
             title="merge vs copy: wall time", xlim=(0, None), ylim=(0, None))
    rss.set(xlabel="model size (GiB, bf16)", ylabel="peak RSS (GiB)",
            title="peak RSS", xlim=(0, None), ylim=(0, None))
    for axes in (wall, rss):
        axes.grid(alpha=0.3)
        axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    args = parse_args()
    free = shutil.disk_usage(args.cache_dir.parent if not args.cache_dir.exists()
                             else args.cache_dir).free
    print(f"free disk {free / GIB:.1f} GiB; load {os.getloadavg()[0]:.1f}; "
          f"{os.cpu_count()} CPUs", flush=True)
    runs_dir = args.cache_dir / "scale-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        base, adapter = ensure_inputs(args.cache_dir, size)
        results += measure_size(size, base, adapter, runs_dir, args)
        if args.delete_inputs and size == "7b":
            shutil.rmtree(base)
            shutil.rmtree(adapter)
            print(f"deleted {base} and {adapter}")
    summary = summarize(results)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2) + "\n")
    if args.plot:
        plot(summary, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
