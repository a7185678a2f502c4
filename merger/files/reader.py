"""Safetensors files read into torch: tensors streamed front to back, or loaded when needed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorafuse.errors import UserError
from lorafuse.merger.files.background import OrderedIO
from lorafuse.merger.files.header import SafetensorsHeader, TensorEntry

if TYPE_CHECKING:
    from lorafuse.merger.files.writer import ShardWriter

# safetensors dtype names <-> torch dtypes for the types a merge may decode.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
CHUNK_BYTES = 4 * 1024 * 1024


def read_full(handle, view: memoryview, ended_early: str) -> int:
    """Fill `view` from `handle`: one read returns at most ~2 GiB on Linux, and less at will."""
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise UserError(ended_early)
        done += got
    return done


class ShardReader:
    """Reads one safetensors file front to back (its sha256 is taken by a FileHasher).

    Writes of raw-copied bytes run on OrderedIO's writer thread while this thread reads on;
    a buffer is refilled only when its queued writes are done."""

    def __init__(self, header: SafetensorsHeader, io: OrderedIO):
        self.header = header
        self._io = io
        self._handle = header.path.open("rb", buffering=0)
        self._handle.seek(header.data_start)
        self._position = header.data_start
        size = min(CHUNK_BYTES, max(header.file_size, 1))
        self._chunk_buffers = (bytearray(size), bytearray(size))
        self._turn = 0

    def _chunks(self, count: int) -> Iterator[tuple[bytearray, memoryview]]:
        """The next `count` bytes in chunks, alternating between two buffers."""
        while count > 0:
            buffer = self._chunk_buffers[self._turn % 2]
            self._turn += 1
            self._io.wait(buffer)
            view = memoryview(buffer)[: min(len(buffer), count)]
            count -= self._read_into(view)
            yield buffer, view

    def _read_into(self, view: memoryview) -> int:
        done = read_full(self._handle, view, f"{self.header.path}: file ended early "
                         "(truncated while reading)")
        self._position += done
        return done

    def _seek_to(self, entry: TensorEntry) -> None:
        target = self.header.data_start + entry.begin
        if target != self._position:
            raise RuntimeError(f"tensors must be read in file order ({entry.name})")

    def copy_to(self, entry: TensorEntry, sink: ShardWriter) -> None:
        """Stream one tensor's bytes into `sink` without decoding them."""
        self._seek_to(entry)
        for buffer, chunk in self._chunks(entry.nbytes):
            sink.write(chunk, fence=buffer)

    def read(self, entry: TensorEntry, buffer: bytearray) -> memoryview:
        """One tensor's bytes in `buffer` (large enough), for decoding; valid until `buffer`
        is passed to this reader again."""
        self._seek_to(entry)
        self._io.wait(buffer)
        view = memoryview(buffer)[: entry.nbytes]
        self._read_into(view)
        return view

    def read_part(self, entry: TensorEntry, start: int, stop: int,
                  buffer: bytearray) -> memoryview:
        """Bytes start..stop of one tensor (read in order, part after part) in `buffer`."""
        target = self.header.data_start + entry.begin + start
        if target != self._position or stop > entry.nbytes:
            raise RuntimeError(f"tensors must be read in file order ({entry.name})")
        self._io.wait(buffer)
        view = memoryview(buffer)[: stop - start]
        self._read_into(view)
        return view

    def close(self) -> None:
        self._handle.close()


@dataclass(eq=False)
class TensorRef:
    """A tensor left in its file until needed: adapters are read per target, not held whole."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    path: Path | None = None
    offset: int = 0  # absolute position of the first byte in `path`
    tensor: torch.Tensor | None = None  # set for tensors that only exist in memory

    @classmethod
    def in_file(cls, header: SafetensorsHeader, entry: TensorEntry) -> TensorRef:
        if entry.dtype not in DTYPES:
            raise UserError(f"{header.path}: tensor {entry.name!r} has unsupported dtype "
                            f"{entry.dtype}")
        return cls(entry.name, entry.shape, DTYPES[entry.dtype], header.path,
                   header.data_start + entry.begin)

    @classmethod
    def in_memory(cls, name: str, tensor: torch.Tensor) -> TensorRef:
        return cls(name, tuple(tensor.shape), tensor.dtype, tensor=tensor)

    def dim(self) -> int:
        return len(self.shape)

    def load(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        tensor = torch.empty(self.shape, dtype=self.dtype)
        if tensor.numel():
            target = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            with self.path.open("rb", buffering=0) as handle:
                handle.seek(self.offset)
                read_full(handle, target, f"{self.path}: file ended early reading {self.name!r}")
        return tensor

    def to(self, device=None, dtype=None) -> torch.Tensor:
        return self.load().to(device=device, dtype=dtype)


def tensor_from_bytes(data: memoryview, entry: TensorEntry) -> torch.Tensor:
    if entry.dtype not in DTYPES:
        raise UserError(f"{entry.name}: cannot merge into a tensor of dtype {entry.dtype}")
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    return torch.frombuffer(data, dtype=DTYPES[entry.dtype]).reshape(entry.shape)
