"""Safetensors headers parsed and checked without torch: where each tensor lies in a file."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from lorafuse.errors import UserError

FLOAT_DTYPES = {"F32", "F16", "BF16"}
ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8,
}
# Sub-byte types of the safetensors format, packed: a tensor's bytes are numel * bits / 8.
ITEM_BITS = {**{name: 8 * size for name, size in ITEM_BYTES.items()},
             "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's place in a safetensors file (offsets relative to the data section)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    """A file's parsed header: where the data section starts and each tensor's entry."""

    path: Path
    data_start: int
    file_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)

    def in_file_order(self) -> list[TensorEntry]:
        return sorted(self.tensors.values(), key=lambda entry: entry.begin)


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and check a safetensors header: 8-byte little-endian length, then JSON."""
    try:
        file_size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, file_size - 8):
                raise UserError(f"{path}: corrupt safetensors header (length {header_len} "
                                f"does not fit a {file_size}-byte file)")
            raw = handle.read(header_len)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: corrupt safetensors header (not JSON: {exc})") from exc
    except RecursionError:
        raise UserError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = _metadata(path, parsed.pop("__metadata__", None))
    header = SafetensorsHeader(path, 8 + header_len, file_size, {}, metadata)
    for name, info in parsed.items():
        header.tensors[name] = _entry(path, name, info)
    _check_layout(header)
    return header


def _metadata(path: Path, metadata: object) -> dict[str, str]:
    """`__metadata__` is a map of strings to strings, or absent."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise UserError(f"{path}: corrupt safetensors header (__metadata__ must map "
                        "strings to strings)")
    return dict(metadata)


def _whole(value: object) -> bool:
    return type(value) is int and value >= 0


def _entry(path: Path, name: str, info: object) -> TensorEntry:
    problem = _entry_problem(info)
    if problem:
        raise UserError(f"{path}: corrupt safetensors header entry for {name!r} ({problem})")
    begin, end = info["data_offsets"]
    entry = TensorEntry(name, info["dtype"], tuple(info["shape"]), begin, end)
    numel = 1
    for dim in entry.shape:
        numel *= dim
    if numel * ITEM_BITS[entry.dtype] != 8 * entry.nbytes:
        raise UserError(f"{path}: corrupt safetensors header: {name!r} has shape "
                        f"{list(entry.shape)} {entry.dtype} but {entry.nbytes} bytes")
    return entry


def _entry_problem(info: object) -> str:
    """What is wrong with one tensor's header entry, or ''."""
    if not isinstance(info, dict):
        return "not a JSON object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEM_BITS:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_whole(dim) for dim in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_whole, offsets)):
        return f"data_offsets {offsets!r} is not two non-negative integers"
    return ""


def _check_layout(header: SafetensorsHeader) -> None:
    """Tensors must tile the data section without gaps and end exactly at the end of the file."""
    position = 0
    for entry in header.in_file_order():
        if entry.begin != position or entry.end < entry.begin:
            raise UserError(f"{header.path}: corrupt safetensors header (tensor {entry.name!r} "
                            f"at bytes {entry.begin}-{entry.end}, expected to start at {position})")
        position = entry.end
    if header.data_start + position != header.file_size:
        raise UserError(f"{header.path}: truncated or corrupt safetensors file "
                        f"({header.file_size} bytes, the header describes "
                        f"{header.data_start + position})")
