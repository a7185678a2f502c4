"""Small JSON files (reports, step records) written atomically: temp file, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.fsync import fsync_path


def write_json(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON; readers see the old file or the new one, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
        fsync_path(path.parent)  # the rename itself survives a crash only with its directory
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise




def loads_json(raw: bytes | str, path: Path) -> object:
    """JSON text parsed; invalid or absurdly nested JSON is a UserError naming `path`."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON (nested too deeply)") from None


def read_json(path: Path, missing: str = "not found") -> dict:
    """A JSON object from `path`; a missing, unreadable or non-object file is a UserError.

    `missing` says what a missing file means to the caller, e.g. "not a lorafuse artifact".
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror})") from None
    data = loads_json(raw, path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
