"""Completion records: a step's output counts as done only if its record, written last, says so.

`WORKDIR/STEP.done.json` names the plan (content hash) and every output file with its size;
it is written (fsynced) after the output directory was published. A directory without a
matching record is the leftover of a crash or of another plan, never a finished step.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorafuse.jsonfile import read_json, write_json

PASSED = "passed"


def record_path(work_root: Path, step: str) -> Path:
    return Path(work_root) / f"{step}.done.json"


def file_sizes(directory: Path) -> dict[str, int]:
    directory = Path(directory)
    return {path.relative_to(directory).as_posix(): path.stat().st_size
            for path in sorted(directory.rglob("*")) if path.is_file()}


def write_record(work_root: Path, step: str, content_hash: str, output: Path) -> None:
    write_json(record_path(work_root, step), {"step": step, "content_hash": content_hash,
                                              "output": Path(output).name,
                                              "files": file_sizes(output)})


def completed(work_root: Path, step: str, content_hash: str, output: Path) -> bool:
    """True only if the record is this plan's and every file it lists is there, full size."""
    path = record_path(work_root, step)
    if not path.is_file():
        return False
    record = read_json(path)
    files = record.get("files")
    if record.get("content_hash") != content_hash or not isinstance(files, dict) or not files:
        return False
    return all(_has_size(Path(output) / name, size) for name, size in files.items())


def _has_size(path: Path, size: object) -> bool:
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def adoption_conflict(provenance: dict, content_hash: str) -> str:
    """Why an existing artifact is not this plan's validated result, or '' if it is."""
    plan = provenance.get("plan") if isinstance(provenance.get("plan"), dict) else {}
    validation = provenance.get("validation")
    if plan.get("content_hash") != content_hash:
        return f"its provenance names plan {plan.get('content_hash')!r}, not {content_hash}"
    if not isinstance(validation, dict) or validation.get(PASSED) is not True:
        return "its provenance records no passed validation"
    return ""
