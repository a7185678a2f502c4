"""Reading the JSONL inputs (eval and calibration sets), with errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

from lorafuse.errors import UserError


def read_records(path: Path, kind: str) -> list[tuple[int, dict]]:
    """Every non-blank line of `path` as (line number, JSON object); bad lines name themselves."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {kind} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {kind} file is a directory") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {kind} file ({exc.strerror})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise UserError(f"{path}: {kind} file has no records")
    return records


def text_field(path: Path, number: int, record: dict, keys: tuple[str, ...]) -> str:
    """The first of `keys` present in `record`, which must be a non-empty string."""
    for key in keys:
        if key in record:
            value = record[key]
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path}:{number}: {key!r} must be a non-empty string")
            return value
    wanted = " or ".join(repr(key) for key in keys)
    raise UserError(f"{path}:{number}: missing {wanted}")
