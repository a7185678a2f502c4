"""`lorafuse tune`: vLLM's max_model_len and max_num_seqs for a model directory on given GPUs."""

from __future__ import annotations

import argparse
import json
import math

from lorafuse.errors import UserError
from lorafuse.serving.gpus import GPUS
from lorafuse.serving.tuning import make_request, read_model_shape, tune


def configure(parser: argparse.ArgumentParser) -> None:
    # Numbers are checked in run() so that bad values give one UserError line (exit 2).
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--gpu", help=f"GPU from the table: {', '.join(GPUS)}")
    parser.add_argument("--gpu-memory", metavar="GiB", help="memory per GPU (instead of --gpu)")
    parser.add_argument("--gpus", default="1", metavar="N", help="GPUs per vLLM server (default 1)")
    parser.add_argument(
        "--tensor-parallel", metavar="N",
        help="tensor-parallel size (default: --gpus; the rest become pipeline stages)",
    )
    parser.add_argument("--utilization", default="0.9", help="vLLM --gpu-memory-utilization (0.9)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto | fp8 (vLLM's flag)")
    parser.add_argument("--target-context", metavar="N", help="tokens per request wanted")
    parser.add_argument("--target-concurrency", metavar="N", help="concurrent requests wanted")
    parser.add_argument("--max-model-len", metavar="N", help="explicit value (wins)")
    parser.add_argument("--max-num-seqs", metavar="N", help="explicit value (wins)")
    parser.add_argument("--max-num-batched-tokens", metavar="N", help="default: vLLM's for the GPU")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (vLLM's flag)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _number(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag} {text!r}: must be a positive number")
    return value


def _count(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a whole number") from None
    if value <= 0:
        raise UserError(f"{flag} {text!r}: must be a positive whole number")
    return value


def run(args: argparse.Namespace) -> int:
    if (args.gpu is None) == (args.gpu_memory is None):
        raise UserError("--gpu / --gpu-memory: give exactly one")
    request = make_request(
        gpu=args.gpu,
        gpu_memory_gib=_number("--gpu-memory", args.gpu_memory),
        gpus=_count("--gpus", args.gpus),
        tensor_parallel=_count("--tensor-parallel", args.tensor_parallel),
        utilization=_number("--utilization", args.utilization),
        kv_cache_dtype=args.kv_cache_dtype,
        target_context=_count("--target-context", args.target_context),
        target_concurrency=_count("--target-concurrency", args.target_concurrency),
        max_model_len=_count("--max-model-len", args.max_model_len),
        max_num_seqs=_count("--max-num-seqs", args.max_num_seqs),
        max_num_batched_tokens=_count("--max-num-batched-tokens", args.max_num_batched_tokens),
        enforce_eager=args.enforce_eager,
    )
    shape = read_model_shape(args.model)
    result = tune(shape, request)
    if args.json:
        payload = result.model_dump()
        payload["vllm_args"] = result.vllm_args()
        payload["model_shape"] = shape.model_dump()
        print(json.dumps(payload, indent=2))
        return 0
    print(f"max_model_len    {result.max_model_len}")
    print(f"max_num_seqs     {result.max_num_seqs}")
    print(f"kv_cache_tokens  {result.kv_cache_tokens}")
    print(f"vllm args        {' '.join(result.vllm_args())}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print()
    print(result.explanation)
    return 0
