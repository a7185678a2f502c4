"""`lorafuse prune`: remove superseded artifacts and their work directories; JSON result out."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from lorafuse.errors import UserError, failure_reason, first_line
from lorafuse.merger.pipeline.prune_result import PruneResult
from lorafuse.termination import TERMINATION_LOG, report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the model volume's root (holds artifacts/ and work/), e.g. /models",
    )
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="NAME=PLAN_HASH",
        help="an artifact to remove, with the plan hash its lorafuse.json and "
        "work directory must name (repeatable)",
    )
    parser.add_argument(
        "--result-file",
        type=Path,
        default=TERMINATION_LOG,
        help="where the JSON result goes (default /dev/termination-log, written when it exists)",
    )


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from lorafuse.merger.files.prune import Target, prune

    signal.signal(signal.SIGTERM, _terminate)
    try:
        if not args.artifact:
            raise UserError("name at least one --artifact NAME=PLAN_HASH")
        targets = [Target.parse(text) for text in args.artifact]
        report = prune(args.root, targets)
    except BaseException as exc:
        _emit(_failure(exc), args.result_file)
        raise
    gone = ", ".join(report.pruned) or "nothing"
    result = PruneResult(
        ok=True,
        message=f"removed {gone}; {report.reclaimed_bytes} bytes freed",
        pruned=report.pruned,
        busy=report.busy,
        reclaimed_bytes=report.reclaimed_bytes,
    )
    _emit(result.fitted(), args.result_file)
    return 0


def _failure(exc: BaseException) -> PruneResult:
    reason = failure_reason(exc)
    return PruneResult(ok=False, reason=reason, message=first_line(exc, 1000)).fitted()


def _emit(result: PruneResult, result_file: Path) -> None:
    report(result.to_json(), result_file, "prune")
