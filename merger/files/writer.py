"""Merged safetensors shards written: tensors grouped into shards, headers encoded, bytes queued."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lorafuse.merger.files.background import OrderedIO
from lorafuse.merger.files.direct import OutputFile
from lorafuse.merger.files.header import ITEM_BYTES
from lorafuse.merger.files.reader import DTYPE_NAMES


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the merged output, as its shard's header will describe it."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * ITEM_BYTES[self.dtype]


def group_into_shards(tensors: list[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Fill shards in order up to `max_bytes`; a tensor larger than that gets a shard of its own."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def encode_header(tensors: list[OutputTensor]) -> bytes:
    """Header bytes (length prefix included), padded with spaces to 8-byte alignment."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        entries[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes one shard of `group_into_shards`: the header up front, then each tensor's bytes
    in that order.

    Writes are queued on OrderedIO's writer thread; `fence` names the buffer a write reads."""

    def __init__(self, path: Path, tensors: list[OutputTensor], io: OrderedIO):
        self.path = path
        self._io = io
        self._pending = list(reversed(tensors))
        self._file = OutputFile(path)
        self.bytes_written = 0
        self._current: OutputTensor | None = None
        self._current_left = 0
        self.write(encode_header(tensors))

    def write(self, data, fence: object | None = None,
              then: Callable[[], None] | None = None) -> None:
        """Queue `data` for writing; `then` runs on the writer thread once it is written."""
        self._io.submit(self._file.write, data, fence=fence)
        if then is not None:
            self._io.submit(then)
        self.bytes_written += len(data)

    def begin(self, name: str) -> OutputTensor:
        if self._current_left:
            raise RuntimeError(f"{self._current.name}: {self._current_left} bytes missing")
        expected = self._pending.pop()
        if expected.name != name:
            raise RuntimeError(f"shard expected {expected.name} next, got {name}")
        self._current, self._current_left = expected, expected.nbytes
        return expected

    def write_tensor(self, name: str, tensor: torch.Tensor, fence: object | None = None) -> None:
        expected = self.begin(name)
        if DTYPE_NAMES.get(tensor.dtype) != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise RuntimeError(f"{name}: expected {expected.dtype}{list(expected.shape)}, "
                               f"got {tensor.dtype}{list(tensor.shape)}")
        self.write(tensor_bytes(tensor), fence=fence)
        self._current_left = 0

    def write_part(self, tensor: torch.Tensor, fence: object | None = None) -> None:
        """The next rows of the tensor begun with `begin` (all of its parts, in order)."""
        expected = self._current
        if (DTYPE_NAMES.get(tensor.dtype) != expected.dtype
                or tensor.shape[1:] != expected.shape[1:]):
            raise RuntimeError(f"{expected.name}: expected {expected.dtype}{list(expected.shape)}, "
                               f"got rows {tensor.dtype}{list(tensor.shape)}")
        self.write_raw(tensor_bytes(tensor), fence=fence)

    def write_raw(self, data: memoryview, fence: object | None = None,
                  then: Callable[[], None] | None = None) -> None:
        """The next bytes of the tensor begun with `begin`, as they are (a copied tensor)."""
        if len(data) > self._current_left:
            raise RuntimeError(f"{self._current.name}: more bytes than its header says")
        self.write(data, fence=fence, then=then)
        self._current_left -= len(data)

    @property
    def full(self) -> bool:
        return not self._pending and not self._current_left

    def close(self) -> None:
        if not self.full:
            raise RuntimeError(f"{self.path}: closed before all its tensors were written")
        self._io.submit(self._finish)
        self._io.drain()

    def _finish(self) -> None:
        self._file.close()  # fsync'd before it returns

    def abort(self) -> None:
        """Close the file whatever state it is in (e.g. after a full disk)."""
        self._file.abort()
