"""`lorafuse validate`: a merged or quantized model against base + adapters (PEFT) on prompts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorafuse.errors import ValidationFailed


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, type=Path, help="base model directory")
    parser.add_argument("--adapter", required=True, action="append", type=Path, dest="adapters",
                        help="PEFT adapter directory; repeat for several (all active at once)")
    parser.add_argument("--weights", type=_weights,
                        help="comma-separated weight per adapter (default 1.0 each)")
    parser.add_argument("--candidate", required=True, type=Path,
                        help="the merged or quantized model directory to check")
    parser.add_argument("--eval", type=Path, help='JSONL of {"prompt", "expected"} lines; '
                        "without it only token agreement and KL are checked, on neutral prompts")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--max-delta", type=float, default=0.01,
                        help="largest allowed task-score loss versus the reference (default 0.01)")
    parser.add_argument("--min-token-agreement", type=float, default=0.5,
                        help="fail below this greedy token agreement (default 0.5)")
    parser.add_argument("--max-mean-kl", type=float, default=0.25,
                        help="fail above this mean KL in nats (default 0.25)")
    parser.add_argument("--report", type=Path, help="write the JSON report here, not to stdout")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers such as 1.0,0.5") from None


def run(args: argparse.Namespace) -> int:
    from lorafuse.jsonfile import write_json
    from lorafuse.merger.pipeline.validate import Thresholds, load_eval, validate

    items = load_eval(args.eval) if args.eval else None
    report = validate(
        base=args.base,
        adapters=args.adapters,
        candidate=args.candidate,
        items=items,
        weights=args.weights,
        max_new_tokens=args.max_new_tokens,
        thresholds=Thresholds(args.max_delta, args.min_token_agreement, args.max_mean_kl),
        device=args.device,
    )
    if args.report:
        write_json(args.report, report.to_dict())
    else:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    if not report.passed:
        raise ValidationFailed(f"{args.candidate}: " + "; ".join(report.reasons))
    print(f"{args.candidate}: passed (token agreement {report.token_agreement:.3f}, "
          f"mean KL {report.mean_kl:.2e})", file=sys.stderr)
    return 0
