"""`lorafuse quantize`: AWQ / GPTQ W4A16 or FP8 dynamic with llm-compressor, or a GGUF file
for llama.cpp and Ollama (gguf-*), atomically."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.merger.engine.choices import GGUF_METHODS, is_gguf
from lorafuse.merger.pipeline.plan import check_ignore_method


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="model directory to quantize (the merged model)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory (must not exist, or hold this very quantization)")
    parser.add_argument("--method", required=True,
                        help="awq (W4A16), gptq (W4A16), fp8 (FP8 dynamic), or GGUF: "
                        + ", ".join(GGUF_METHODS))
    parser.add_argument("--calibration", type=Path,
                        help='JSONL of {"text"} or {"prompt"} lines (awq and gptq)')
    parser.add_argument("--samples", type=int, default=64,
                        help="calibration samples to use, the first N lines (default 64)")
    parser.add_argument("--seq-len", type=int, default=512,
                        help="calibration sequence length in tokens (default 512)")
    parser.add_argument("--ignore", action="append", default=[], metavar="LAYER",
                        help="keep these linear layers unquantized besides lm_head (awq, gptq, "
                        "fp8): a module name, a class name, or re:REGEX on the module name; "
                        "repeat for several")


def _terminate(signum, _frame):
    # Kubernetes stops pods with SIGTERM: unwind so the staging directory is removed.
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_ignore_method(args.method, args.ignore)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if is_gguf(args.method):
        return _run_gguf(args)
    from lorafuse.merger.pipeline.quantize import QuantizeOptions, quantize

    result = quantize(QuantizeOptions(
        model=args.model, out=args.out, method=args.method, calibration=args.calibration,
        samples=args.samples, seq_len=args.seq_len, ignore=tuple(args.ignore),
    ))
    section = result.quantization
    verb = "verified existing" if result.reused else "wrote"
    group = f", group size {section['group_size']}" if section.get("group_size") else ""
    kept = f", unquantized: {' '.join(section['ignore'])}"
    print(f"{verb} {result.out}: {section['method']} {section['scheme']}{group}{kept}")
    return 0


def _run_gguf(args: argparse.Namespace) -> int:
    from lorafuse.merger.pipeline.gguf_step import import_exporter

    exporter = import_exporter(args.method)
    result = exporter.export_gguf(args.model, args.out, args.method)
    verb = "verified existing" if result.reused else "wrote"
    print(f"{verb} {result.out / exporter.GGUF_NAME}: {result.quantization['scheme']}")
    return 0
