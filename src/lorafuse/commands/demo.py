"""`lorafuse demo`: build a tiny model and adapter, merge them, compare with PEFT."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# float32 merge of a tiny model: anything above this means the merge is wrong.
MAX_LOGIT_DIFF = 1e-3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("demo"),
                        help="working directory (default ./demo); reused when run again")


def run(args: argparse.Namespace) -> int:
    from lorafuse.merger.demo.demo import build_inputs, compare, format_table, quiet_libraries
    from lorafuse.merger.engine.merge import MergeOptions, merge

    started = time.monotonic()
    quiet_libraries()
    directory = args.dir.absolute()
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
