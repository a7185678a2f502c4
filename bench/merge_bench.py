"""Benchmark `lorafuse merge` against PEFT's merge_and_unload on a 1.1B Llama (bf16, LoRA r=64).

    python bench/merge_bench.py [--rounds 3] [--cache-dir DIR] [--skip-limited] [--peft-only]

Creates the model and adapter under the cache dir if missing (default
~/.cache/lorafuse/bench, or $LORAFUSE_BENCH_CACHE), runs each merge in a fresh process,
alternating (after one untimed warm-up round), and prints wall time, CPU time and peak RSS,
their medians and the lorafuse/PEFT ratios; checks once that
both outputs hold the same tensors (within bf16 rounding); then runs both merges again
inside a memory cgroup limited to one third of the model's size (needs root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from checkpoints import (
    LlamaShape,
    directory_bytes,
    is_complete,
    write_llama_checkpoint,
    write_lora_adapter,
)
from compare import compare_checkpoints
from measure import Measurement, MemoryCgroup, evict_from_page_cache, run_measured

HERE = Path(__file__).resolve().parent
GIB = 1024**3
WALL_TARGET, RSS_TARGET = 1 / 4, 1 / 8


def parse_args() -> argparse.Namespace:
    default_cache = os.environ.get("LORAFUSE_BENCH_CACHE", "~/.cache/lorafuse/bench")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(default_cache).expanduser())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (page cache, first writes)"
    )
    parser.add_argument("--skip-limited", action="store_true", help="no memory-limited run")
    parser.add_argument("--skip-compare", action="store_true", help="no tensor comparison")
    parser.add_argument("--peft-only", action="store_true", help="measure the PEFT baseline only")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    return parser.parse_args()


def ensure_inputs(cache: Path) -> tuple[Path, Path]:
    base, adapter = cache / "llama-1.1b-bf16", cache / "lora-r64-all-linear"
    if not is_complete(base):
        started = time.perf_counter()
        write_llama_checkpoint(base)
        print(f"wrote {base} in {time.perf_counter() - started:.1f} s", flush=True)
    if not is_complete(adapter):
        write_lora_adapter(adapter, base)
        print(f"wrote {adapter}", flush=True)
    return base, adapter


def lorafuse_command(base: Path, adapter: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lorafuse", "merge", "--base", str(base),
            "--adapter", str(adapter), "--out", str(out)]  # fmt: skip


def peft_command(base: Path, adapter: Path, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "peft_merge.py"), str(base), str(adapter), str(out)]


def warm_page_cache(*directories: Path) -> None:
    """Read the inputs once so every timed run starts from the same, warm page cache."""
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    while handle.read(64 << 20):
                        pass


def show(run: Measurement) -> None:
    parts = [
        f"  {run.label:<9}",
        f"wall {run.wall_s:6.2f} s",
        f"cpu {run.cpu_s:6.2f} s",
        f"peak RSS {run.peak_rss_bytes / GIB:5.3f} GiB"
        f" (anon {run.peak_rss_anon_bytes / GIB:5.3f}, file {run.peak_rss_file_bytes / GIB:5.3f})",
    ]
    if run.cgroup_peak_bytes is not None:
        parts.append(f"cgroup peak {run.cgroup_peak_bytes / GIB:5.3f} GiB")
        parts.append(f"cgroup anon peak {run.cgroup_peak_anon_bytes / GIB:5.3f} GiB")
        parts.append(f"oom_kill {run.oom_kills}")
    parts += [f"load {run.load_average:3.1f}", f"exit {run.returncode}"]
    print("  ".join(parts), flush=True)
    if not run.ok and run.stderr_tail:
        print("    " + run.stderr_tail.replace("\n", "\n    "), flush=True)


def merge_tools(args) -> list[tuple[str, Callable[[Path, Path, Path], list[str]]]]:
    if args.peft_only:
        return [("peft", peft_command)]
    return [("lorafuse", lorafuse_command), ("peft", peft_command)]


def timed_rounds(args, base: Path, adapter: Path, runs_dir: Path) -> list[Measurement]:
    """Alternate the merges, each in a fresh process; compare the outputs of round 1."""
    results: list[Measurement] = []
    warm_page_cache(base, adapter)
    for round_no in range(1 - args.warmup, args.rounds + 1):
        warmup = round_no < 1
        print("warm-up (not counted)" if warmup else f"round {round_no}/{args.rounds}", flush=True)
        for label, command in merge_tools(args):
            out = runs_dir / label
            shutil.rmtree(out, ignore_errors=True)
            run = run_measured(label, command(base, adapter, out))
            show(run)
            if not run.ok:
                raise SystemExit(f"{label} failed (exit {run.returncode})")
            if not warmup:
                results.append(run)
        if round_no == 1 and not args.peft_only and not args.skip_compare:
            check_equal(runs_dir / "lorafuse", runs_dir / "peft", base)
            # Kept as the reference for the memory-limited run, out of the page cache.
            shutil.rmtree(runs_dir / "reference", ignore_errors=True)
            (runs_dir / "peft").rename(runs_dir / "reference")
            evict_from_page_cache(runs_dir / "reference")
        for label, _command in merge_tools(args):
            shutil.rmtree(runs_dir / label, ignore_errors=True)
    return results


def check_equal(candidate: Path, reference: Path, base: Path) -> None:
    print(f"comparing {candidate.name} output with {reference.name} output ...", flush=True)
    comparison = compare_checkpoints(candidate, reference, base)
    print("  " + comparison.summary(), flush=True)
    if not comparison.equal_within_rounding:
        raise SystemExit(f"{candidate} and {reference} differ")


def summarize(results: list[Measurement]) -> dict:
    summary: dict = {}
    for label in dict.fromkeys(run.label for run in results):
        runs = [run for run in results if run.label == label]
        summary[label] = {
            "wall_s": statistics.median(run.wall_s for run in runs),
            "cpu_s": statistics.median(run.cpu_s for run in runs),
            "peak_rss_bytes": statistics.median(run.peak_rss_bytes for run in runs),
        }
        median = summary[label]
        print(
            f"median {label:<9} wall {median['wall_s']:6.2f} s  cpu {median['cpu_s']:6.2f} s  "
            f"peak RSS {median['peak_rss_bytes'] / GIB:5.3f} GiB"
        )
    if {"lorafuse", "peft"} <= summary.keys():
        wall = summary["lorafuse"]["wall_s"] / summary["peft"]["wall_s"]
        rss = summary["lorafuse"]["peak_rss_bytes"] / summary["peft"]["peak_rss_bytes"]
        cpu = summary["lorafuse"]["cpu_s"] / summary["peft"]["cpu_s"]
        summary["ratio"] = {"wall": wall, "cpu": cpu, "peak_rss": rss}
        print(f"lorafuse/PEFT wall     {wall:.3f} (1/{1 / wall:.1f}); target <= 1/4: "
              f"{'met' if wall <= WALL_TARGET else 'NOT met'}")  # fmt: skip
        print(f"lorafuse/PEFT cpu time {cpu:.3f} (1/{1 / cpu:.1f})")
        print(f"lorafuse/PEFT peak RSS {rss:.3f} (1/{1 / rss:.1f}); target <= 1/8: "
              f"{'met' if rss <= RSS_TARGET else 'NOT met'}")  # fmt: skip
    return summary


def limited_runs(args, base: Path, adapter: Path, runs_dir: Path) -> list[Measurement]:
    """Both merges inside a memory cgroup of one third of the model's size, cold inputs."""
    model = directory_bytes(base)
    limit = model // 3
    print(f"memory-limited runs: limit {limit / GIB:.3f} GiB = model {model / GIB:.3f} GiB / 3")
    results = []
    for label, command in merge_tools(args):
        out = runs_dir / f"{label}-limited"
        shutil.rmtree(out, ignore_errors=True)
        # Cold inputs: pages cached earlier are charged elsewhere and would be free here.
        evict_from_page_cache(base)
        evict_from_page_cache(adapter)
        try:
            cgroup = MemoryCgroup(f"lorafuse-bench-{label}-{os.getpid()}", limit)
        except (OSError, RuntimeError) as exc:  # not root, or no memory controller
            print(f"  memory-limited runs skipped: cannot create a memory cgroup ({exc})")
            return results
        try:
            print(f"  {label}: {cgroup.describe()}", flush=True)
            run = run_measured(label, command(base, adapter, out), cgroup)
        finally:
            cgroup.remove()
        show(run)
        results.append(run)
        if run.ok and label == "lorafuse" and (runs_dir / "reference").is_dir():
            check_equal(out, runs_dir / "reference", base)
        shutil.rmtree(out, ignore_errors=True)
    return results


def main() -> int:
    args = parse_args()
    shape = LlamaShape()
    base, adapter = ensure_inputs(args.cache_dir)
    runs_dir = args.cache_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    print(f"model: {shape.parameter_count():,} parameters, {directory_bytes(base) / GIB:.3f} GiB; "
          f"adapter {directory_bytes(adapter) / GIB:.3f} GiB; {os.cpu_count()} CPUs")  # fmt: skip
    results = timed_rounds(args, base, adapter, runs_dir)
    report = {"runs": [vars(run) for run in results], "median": summarize(results)}
    if not args.skip_limited:
        limited = limited_runs(args, base, adapter, runs_dir)
        report["limited"] = [vars(run) for run in limited]
    shutil.rmtree(runs_dir / "reference", ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    lorafuse_limited = [run for run in report.get("limited", []) if run["label"] == "lorafuse"]
    return 1 if any(run["returncode"] != 0 for run in lorafuse_limited) else 0


if __name__ == "__main__":
    raise SystemExit(main())
