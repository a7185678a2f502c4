"""ReadAhead: pieces delivered in plan order with the right bytes, every byte hashed once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lorafuse.errors import UserError
from lorafuse.merger.files import readahead
from lorafuse.merger.files.hashing import FileHasher
from lorafuse.merger.files.readahead import PlannedFile, ReadAhead


def _file(path: Path, size: int, seed: int) -> bytes:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    path.write_bytes(data[:size])
    return data[:size]


def _read_all(reader: ReadAhead, plans: list[PlannedFile]) -> list[bytes]:
    contents = []
    for index, plan in enumerate(plans):
        offset, parts = plan.data_start, []
        for length in plan.pieces:
            piece = reader.take(index, offset, length)
            parts.append(bytes(piece.view))
            piece.release()
            offset += length
        contents.append(b"".join(parts))
    reader.finish()
    return contents


# unaligned header and piece sizes, a piece larger than the small buffers, an empty piece
PIECES = (5000, 0, 4096, 9 * 1024 * 1024 + 3, 123, 70001)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_pieces_and_hashes_match_the_files(tmp_path, monkeypatch, direct):
    if direct:  # the files were just written: cached, so read from the cache unless told
        monkeypatch.setattr(readahead._InputFile, "_cached", lambda self: False)
    else:
        monkeypatch.setattr(readahead, "_O_DIRECT", 0)
    files = []
    for seed, start in enumerate((8 + 1234, 8 + 4088)):
        path = tmp_path / f"shard{seed}.safetensors"
        files.append((path, start, _file(path, start + sum(PIECES), seed)))
    plans = [PlannedFile(path, start, PIECES) for path, start, _ in files]
    hasher = FileHasher([], streamed=[path for path, _, _ in files])
    try:
        contents = _read_all(ReadAhead(plans, hasher, small_buffers=2), plans)
        for (path, start, data), content in zip(files, contents, strict=True):
            assert content == data[start:]
            assert hasher.digest(path) == hashlib.sha256(data).hexdigest()
    finally:
        hasher.close()


def test_a_file_changed_while_streamed_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    _file(path, 8 + 100 + 5000, 1)
    hasher = FileHasher([], streamed=[path])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    plans = [PlannedFile(path, 108, (5000,))]
    try:
        with pytest.raises(UserError, match="changed while the merge was reading it"):
            _read_all(ReadAhead(plans, hasher), plans)
    finally:
        hasher.close()


def test_a_file_shorter_than_planned_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    _file(path, 8 + 100 + 4000, 2)
    plans = [PlannedFile(path, 108, (5000,))]
    reader = ReadAhead(plans, None)
    try:
        with pytest.raises(UserError, match="ended early"):
            reader.take(0, 108, 5000)
    finally:
        reader.close()


def test_close_stops_a_reader_nobody_takes_from(tmp_path):
    path = tmp_path / "model.safetensors"
    _file(path, 64 * 4096, 3)
    reader = ReadAhead([PlannedFile(path, 0, (4096,) * 64)], None, small_buffers=2)
    reader.close()  # returns although the reader waits for buffers nobody releases
