"""lorafuse.json: what an artifact was made from (inputs and their sha256), how, and when."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from lorafuse.jsonfile import read_json, write_json

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
    return read_json(Path(directory) / PROVENANCE_NAME, missing="missing (not a lorafuse artifact)")


def write_provenance(directory: Path, data: dict) -> None:
    """Write lorafuse.json atomically (temp file in the same directory, fsync, rename)."""
    write_json(Path(directory) / PROVENANCE_NAME, data)


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
