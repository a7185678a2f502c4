"""lorafuse.json: what an artifact was made from (inputs and their sha256), how, and when."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from lorafuse.errors import UserError

PROVENANCE_NAME = "lorafuse.json"
_CHUNK = 16 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while got := handle.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_provenance(directory: Path) -> dict:
    path = Path(directory) / PROVENANCE_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a lorafuse artifact)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def write_provenance(directory: Path, data: dict) -> None:
    """Write lorafuse.json atomically (temp file in the same directory, fsync, rename)."""
    directory = Path(directory)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{PROVENANCE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / PROVENANCE_NAME)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def update_provenance(directory: Path, **sections) -> dict:
    """Replace top-level sections of lorafuse.json (e.g. quantization=..., validation=...)."""
    data = read_provenance(directory)
    data.update(sections)
    write_provenance(directory, data)
    return data


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`: dicts merge key by key, lists of dicts of equal length item by item."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = deep_merge(old, value)
        elif (isinstance(old, list) and isinstance(value, list) and len(old) == len(value)
              and all(isinstance(x, dict) for x in old + value)):
            merged[key] = [deep_merge(a, b) for a, b in zip(old, value, strict=True)]
        else:
            merged[key] = value
    return merged
