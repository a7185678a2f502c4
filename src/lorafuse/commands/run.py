"""`lorafuse run FILE.yaml`: a ModelDeployment on this machine (plan, Job steps, then vLLM)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

MODELS_ROOT_ENV = "LORAFUSE_MODELS_ROOT"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="ModelDeployment YAML")
    parser.add_argument("--models-root", type=Path,
                        help="local stand-in for the /models volume: /models/x in the manifest "
                        f"is MODELS_ROOT/x; artifacts and work go there too (default "
                        f"${MODELS_ROOT_ENV}, else the current directory)")
    parser.add_argument("--no-serve", action="store_true", help="stop after publishing")
    parser.add_argument("--port", type=int, help="vLLM port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds vLLM may take to start (default 600)")
    parser.add_argument("--prompt", help="prompt for the completion (default: the first eval "
                        "prompt, else 'Hello')")
    parser.add_argument("--keep-serving", action="store_true",
                        help="keep vLLM running after the completion, until Ctrl-C")


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from lorafuse.runner import RunOptions, run_manifest

    signal.signal(signal.SIGTERM, _terminate)
    root = args.models_root or Path(os.environ.get(MODELS_ROOT_ENV) or ".")
    options = RunOptions(manifest=args.manifest, models_root=root, serve=not args.no_serve,
                         port=args.port, timeout=args.timeout, prompt=args.prompt,
                         keep_serving=args.keep_serving)
    try:
        return run_manifest(options, say=lambda line: print(line, flush=True))
    except RuntimeError as exc:  # vLLM did not start: its log tail says why
        print(f"lorafuse run: {exc}", file=sys.stderr)
        return 1
