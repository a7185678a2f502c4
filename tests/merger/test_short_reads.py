"""Reads loop until their buffer is full: a read may return less (Linux: at most ~2 GiB)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorafuse.errors import UserError
from lorafuse.merger.files.header import read_header
from lorafuse.merger.files.reader import TensorRef, read_full


class ShortReads(io.RawIOBase):
    """A file object whose every read returns at most `limit` bytes, as a kernel may."""

    def __init__(self, data: bytes, limit: int = 7):
        self._data = io.BytesIO(data)
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._data.seek(offset, whence)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: self._limit]
        return self._data.readinto(view)


def test_read_full_fills_the_buffer_from_short_reads():
    data = bytes(range(256)) * 40
    target = bytearray(len(data))
    assert read_full(ShortReads(data), memoryview(target), "ended early") == len(data)
    assert bytes(target) == data


def test_read_full_reports_a_file_that_ends_early():
    with pytest.raises(UserError, match="ended early"):
        read_full(ShortReads(b"abc"), memoryview(bytearray(10)), "ended early")


def test_tensor_ref_load_survives_short_reads(tmp_path, monkeypatch):
    expected = torch.randn(33, 17)
    path = tmp_path / "adapter.safetensors"
    save_file({"w": expected}, path)
    header = read_header(path)
    ref = TensorRef.in_file(header, header.tensors["w"])
    data = path.read_bytes()
    monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: ShortReads(data, 5))
    assert torch.equal(ref.load(), expected)
