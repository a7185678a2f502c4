"""A container's one-line JSON result: printed, and written where Kubernetes reads it."""

from __future__ import annotations

import sys
from pathlib import Path

TERMINATION_LOG = Path("/dev/termination-log")


def report(text: str, result_file: Path, command: str) -> None:
    """Print the result and write it to `result_file` (the termination log by default)."""
    print(text)
    if result_file == TERMINATION_LOG and not result_file.exists():
        return  # not in a Kubernetes container: stdout is the result
    try:
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(text)
    except OSError as exc:
        print(f"lorafuse {command}: cannot write {result_file} ({exc.strerror})", file=sys.stderr)
