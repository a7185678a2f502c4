"""Safetensors shards read and written by hand: header parsing, sequential hashed reads, writes."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafuse.errors import UserError
from lorafuse.merger.files.background import OrderedIO
from lorafuse.merger.files.direct import OutputFile

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
FLOAT_DTYPES = {"F32", "F16", "BF16"}
ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


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
    if not isinstance(parsed, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = parsed.pop("__metadata__", None) or {}
    header = SafetensorsHeader(path, 8 + header_len, file_size, {}, dict(metadata))
    for name, info in parsed.items():
        header.tensors[name] = _entry(path, name, info)
    _check_layout(header)
    return header


def _entry(path: Path, name: str, info: object) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        entry = TensorEntry(name, str(dtype), tuple(int(d) for d in shape), int(begin), int(end))
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"{path}: corrupt safetensors header entry for {name!r}") from exc
    numel = 1
    for dim in entry.shape:
        numel *= dim
    item = ITEM_BYTES.get(entry.dtype)
    if item is not None and numel * item != entry.nbytes:
        raise UserError(f"{path}: corrupt safetensors header: {name!r} has shape "
                        f"{list(entry.shape)} {entry.dtype} but {entry.nbytes} bytes")
    return entry


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


class ShardReader:
    """Reads one safetensors file front to back (its sha256 is taken by a FileHasher).

    Writes of raw-copied bytes run on OrderedIO's write lane while this thread reads on; a
    buffer is refilled only when its queued writes are done."""

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
        done = 0
        while done < len(view):
            got = self._handle.readinto(view[done:])
            if not got:
                raise UserError(f"{self.header.path}: file ended early (truncated while reading)")
            done += got
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
                if handle.readinto(target) != len(target):
                    raise UserError(f"{self.path}: file ended early reading {self.name!r}")
        return tensor

    def to(self, device=None, dtype=None) -> torch.Tensor:
        return self.load().to(device=device, dtype=dtype)


def tensor_from_bytes(data: memoryview, entry: TensorEntry) -> torch.Tensor:
    if entry.dtype not in DTYPES:
        raise UserError(f"{entry.name}: cannot merge into a tensor of dtype {entry.dtype}")
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    return torch.frombuffer(data, dtype=DTYPES[entry.dtype]).reshape(entry.shape)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * ITEM_BYTES[self.dtype]


def plan_shards(tensors: list[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
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
    """Writes one planned shard: the header up front, then each tensor's bytes in plan order.

    Writes are queued on OrderedIO's write lane; `fence` names the buffer a write reads."""

    def __init__(self, path: Path, tensors: list[OutputTensor], io: OrderedIO):
        self.path = path
        self._io = io
        self._pending = list(reversed(tensors))
        self._file = OutputFile(path)
        self.bytes_written = 0
        self._current: OutputTensor | None = None
        self._current_left = 0
        self.write(encode_header(tensors))

    def write(self, data, fence: object | None = None) -> None:
        self._io.submit("write", self._file.write, data, fence=fence)
        self.bytes_written += len(data)

    def begin(self, name: str) -> OutputTensor:
        if self._current_left:
            raise RuntimeError(f"{self._current.name}: {self._current_left} bytes missing")
        expected = self._pending.pop()
        if expected.name != name:
            raise RuntimeError(f"shard plan expected {expected.name}, got {name}")
        self._current, self._current_left = expected, expected.nbytes
        return expected

    def write_tensor(self, name: str, tensor: torch.Tensor, fence: object | None = None) -> None:
        planned = self.begin(name)
        if DTYPE_NAMES.get(tensor.dtype) != planned.dtype or tuple(tensor.shape) != planned.shape:
            raise RuntimeError(f"{name}: planned {planned.dtype}{list(planned.shape)}, "
                               f"got {tensor.dtype}{list(tensor.shape)}")
        self.write(tensor_bytes(tensor), fence=fence)
        self._current_left = 0

    def write_part(self, tensor: torch.Tensor, fence: object | None = None) -> None:
        """The next rows of the tensor begun with `begin` (all of its parts, in order)."""
        planned = self._current
        if DTYPE_NAMES.get(tensor.dtype) != planned.dtype or tensor.shape[1:] != planned.shape[1:]:
            raise RuntimeError(f"{planned.name}: planned {planned.dtype}{list(planned.shape)}, "
                               f"got rows {tensor.dtype}{list(tensor.shape)}")
        data = tensor_bytes(tensor)
        if len(data) > self._current_left:
            raise RuntimeError(f"{planned.name}: more rows than planned")
        self.write(data, fence=fence)
        self._current_left -= len(data)

    def copy_from(self, name: str, reader: ShardReader, entry: TensorEntry) -> None:
        planned = self.begin(name)
        if planned.nbytes != entry.nbytes:
            raise RuntimeError(f"{name}: planned {planned.nbytes} bytes, source has {entry.nbytes}")
        reader.copy_to(entry, self)
        self._current_left = 0

    @property
    def full(self) -> bool:
        return not self._pending and not self._current_left

    def close(self) -> None:
        if not self.full:
            raise RuntimeError(f"{self.path}: closed before all planned tensors were written")
        self._io.submit("write", self._finish)
        self._io.drain()

    def _finish(self) -> None:
        self._file.close()  # fsync'd before it returns

    def abort(self) -> None:
        """Close the file whatever state it is in (e.g. after a full disk)."""
        self._file.abort()
