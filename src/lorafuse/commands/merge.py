"""`lorafuse merge`: merge LoRA adapters into their base model (streaming, exact, atomic)."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.merger.engine.choices import COMBINE_METHODS, OUTPUT_DTYPES

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path, metavar="DIR",
                        help="base model directory (Hugging Face format, safetensors)")
    parser.add_argument("--adapter", required=True, action="append", type=Path, dest="adapters",
                        metavar="DIR", help="PEFT LoRA adapter directory; repeat for several")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output directory: must not exist, or hold this very merge")
    parser.add_argument("--weights", type=_weights, metavar="W1,W2",
                        help="weight per adapter (default 1.0 each)")
    parser.add_argument("--combine", default="linear", choices=COMBINE_METHODS)
    parser.add_argument("--density", type=float, metavar="D",
                        help="fraction of each task vector kept (ties, dare_*)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed for DARE's random pruning")
    parser.add_argument("--dtype", default="auto", choices=OUTPUT_DTYPES)
    parser.add_argument("--shard-size", default="5GB", metavar="SIZE",
                        help="maximum output shard size (default 5GB)")
    parser.add_argument("--device", default="cpu", metavar="DEV",
                        help="cpu or cuda: where the non-trivial merges are computed")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept adapter_model.bin (loaded with weights_only=True)")
    parser.add_argument("--name", action="append", dest="names", metavar="NAME",
                        help="adapter name for lorafuse.json, once per --adapter "
                        "(default: folder names)")


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers such as 1.0,0.5") from None


def _terminate(signum, _frame):
    # Kubernetes stops pods with SIGTERM: unwind so the staging directory is removed.
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from lorafuse.merger.files.background import collector_paused
    from lorafuse.merger.files.hashing import FileHasher, merge_inputs

    signal.signal(signal.SIGTERM, _terminate)
    # sha256 of the adapters (for lorafuse.json) runs on another core while torch is
    # imported; the base shards are hashed as the merge reads them
    hasher = FileHasher(*merge_inputs(args.base.absolute(),
                                      [a.absolute() for a in args.adapters]))
    try:
        with collector_paused():  # importing torch makes many objects and little garbage
            from lorafuse.merger.engine.merge import MergeOptions, merge
    except BaseException:
        hasher.close()
        raise
    options = MergeOptions(
        base=args.base, adapters=args.adapters, out=args.out, weights=args.weights,
        combine=args.combine, density=args.density, seed=args.seed, dtype=args.dtype,
        shard_size=args.shard_size, device=args.device, allow_pickle=args.allow_pickle,
        adapter_names=args.names,
    )
    if args.names and len(args.names) != len(args.adapters):
        hasher.close()
        raise UserError(f"--name: {len(args.names)} names for {len(args.adapters)} adapters")
    result = merge(options, hasher)
    verb = "verified existing" if result.reused else "wrote"
    print(f"{verb} {result.out}: {result.tensors_merged} tensors merged")
    return 0
