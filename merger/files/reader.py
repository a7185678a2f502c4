"""Safetensors tensors read into torch: decoded from streamed bytes, or loaded when needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lorafuse.errors import UserError
from lorafuse.merger.files.header import SafetensorsHeader, TensorEntry

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


def read_full(handle, view: memoryview, ended_early: str) -> int:
    """Fill `view` from `handle`: one read returns at most ~2 GiB on Linux, and less at will."""
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise UserError(ended_early)
        done += got
    return done


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
