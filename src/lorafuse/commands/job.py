"""`lorafuse job STEP`: one step of the merge Job (or `verify` in serving pods); JSON result out."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from lorafuse.errors import UserError
from lorafuse.merger.pipeline.steps import STEPS
from lorafuse.termination import TERMINATION_LOG, report

if TYPE_CHECKING:
    from lorafuse.merger.pipeline.result import JobResult


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", choices=[*STEPS, "verify"])
    parser.add_argument("--plan", type=Path, help="plan.json (MergePlan); all steps but verify")
    parser.add_argument(
        "--workdir", type=Path, help="shared work directory (default: ARTIFACT_ROOT/../work/NAME)"
    )
    parser.add_argument(
        "--result-file",
        type=Path,
        default=TERMINATION_LOG,
        help="where the JSON result goes (default /dev/termination-log, written when it exists)",
    )
    parser.add_argument("--artifact", type=Path, help="verify: the artifact directory")
    parser.add_argument("--digest", help="verify: the expected sha256:<hex> digest")


def _terminate(signum, _frame):
    # Kubernetes stops pods with SIGTERM: unwind so staging directories are removed.
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from lorafuse.merger.files.prune import hold_in_use
    from lorafuse.merger.pipeline import job

    signal.signal(signal.SIGTERM, _terminate)
    work = None
    try:
        if args.step == "verify":
            if args.artifact is None or args.digest is None:
                raise UserError("verify needs --artifact DIR and --digest sha256:<hex>")
            result = job.verify(args.artifact, args.digest)
        else:
            if args.plan is None:
                raise UserError(f"{args.step} needs --plan plan.json")
            plan = job.load_plan(args.plan)
            work = job.claim_workdir(plan, args.workdir or job.default_workdir(plan))
            while hold_in_use(work.root) is None:  # held to the end: `lorafuse prune` skips it
                work = job.claim_workdir(plan, work.root)
            result = job.run_step(args.step, plan, work)
    except BaseException as exc:
        _emit(job.failure_result(args.step, exc, work), args.result_file)
        raise
    _emit(result, args.result_file)
    return 0


def _emit(result: JobResult, result_file: Path) -> None:
    report(result.to_json(), result_file, "job")
