"""The weights streamed: each base shard read (and hashed) once, each tensor copied or merged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lorafuse.merger.engine.basemodel import INDEX_NAME, BaseCheckpoint
from lorafuse.merger.engine.layout import MergeLayout, TensorRecipe
from lorafuse.merger.engine.options import CheckedOptions
from lorafuse.merger.engine.tensor_math import (
    BlockedRows,
    Workspace,
    group_rows,
    grouped,
    merge_tensor,
    reserve_for,
    torch_threads,
)
from lorafuse.merger.files.background import OrderedIO, RowPool, worker_count
from lorafuse.merger.files.header import SafetensorsHeader, TensorEntry
from lorafuse.merger.files.readahead import PlannedFile, ReadAhead, StreamHashes
from lorafuse.merger.files.reader import DTYPES, tensor_from_bytes
from lorafuse.merger.files.writer import ShardWriter, group_into_shards, shard_file_names
from lorafuse.progress import Progress

log = logging.getLogger(__name__)


# A tensor copied unchanged goes through in pieces of this size.
COPY_PIECE_BYTES = 4 * 1024 * 1024


def write_weights(base: BaseCheckpoint, layout: MergeLayout, staging: Path,
                  checked: CheckedOptions, hashes: StreamHashes | None = None) -> dict[str, int]:
    """Stream every base shard once, in file order: copy or merge each tensor. The shards'
    sha256 are reported to `hashes` as they are read."""
    io, pool = OrderedIO(), RowPool(worker_count())
    workspace = Workspace(checked.device, io, pool)
    try:
        # one kernel thread per worker: parallel row blocks beat threads inside small kernels
        with torch_threads(1):
            return _stream(base, layout, staging, workspace, checked, hashes)
    finally:
        io.close()
        pool.close()


def _stream(base: BaseCheckpoint, layout: MergeLayout, staging: Path, workspace: Workspace,
            checked: CheckedOptions, hashes: StreamHashes | None) -> dict[str, int]:
    shards = group_into_shards(layout.outputs, checked.shard_bytes)
    names = shard_file_names(len(shards))
    pending = list(zip(names, shards, strict=True))
    sizes: dict[str, int] = {}
    current: list[ShardWriter] = []

    def next_writer() -> ShardWriter:
        """The shard the next tensor goes to; full shards are closed as soon as they fill."""
        if current and not current[0].full:
            return current[0]
        if current:
            _close_shard(current[0], sizes)
            current.pop()
        name, tensors = pending.pop(0)
        current.append(ShardWriter(staging / name, tensors, workspace.io))
        return current[0]

    reserve_for(workspace, [(entry, layout.by_source[entry.name]) for header in base.headers
                            for entry in header.in_file_order()], checked.settings)
    plan = [PlannedFile(h.path, h.data_start, tuple(n for _, _, n in _pieces(h, layout, checked)))
            for h in base.headers]
    reader = ReadAhead(plan, hashes)
    total = sum(h.file_size for h in base.headers)
    try:
        with Progress(total, "merging") as progress:
            for index, header in enumerate(base.headers):
                progress.advance(header.data_start)
                source = _Source(reader, index, header)
                for entry in header.in_file_order():
                    _emit(layout.by_source[entry.name], entry, source, next_writer, workspace,
                          checked)
                    progress.advance(entry.nbytes)
        if current:
            _close_shard(current[0], sizes)
            current.pop()
        reader.finish()  # every shard hashed, and unchanged since hashing began
    except BaseException:
        reader.close()
        workspace.io.close()  # let queued writes stop before their files are closed
        for writer in current:
            writer.abort()
        raise
    if pending:
        raise RuntimeError(f"{len(pending)} shards were not written")
    if len(shards) > 1:
        sizes[INDEX_NAME] = _write_index(staging, layout, shards, names)
    return sizes


def _copied(entry: TensorEntry, recipes: list[TensorRecipe]) -> bool:
    """Nothing changes: the tensor's bytes are written as they are read."""
    first = recipes[0]
    return len(recipes) == 1 and not first.changed and first.dtype == entry.dtype


def _pieces(header: SafetensorsHeader, layout: MergeLayout, checked: CheckedOptions):
    """(tensor, start, length) of each read of one shard, in file order, as _emit takes them:
    copied tensors in pieces, grouped ones a group of rows at a time, others whole."""
    for entry in header.in_file_order():
        recipes = layout.by_source[entry.name]
        if _copied(entry, recipes):
            for start in range(0, entry.nbytes, COPY_PIECE_BYTES):
                yield entry, start, min(COPY_PIECE_BYTES, entry.nbytes - start)
        elif grouped(entry, recipes, checked.settings, checked.device):
            rows, cols = entry.shape
            row_bytes = cols * DTYPES[entry.dtype].itemsize
            step = group_rows(cols)
            for first in range(0, rows, step):
                yield entry, first * row_bytes, (min(first + step, rows) - first) * row_bytes
        else:
            yield entry, 0, entry.nbytes


class _Source:
    """One shard's bytes as ReadAhead delivers them, checked against the tensor asked for."""

    def __init__(self, reader: ReadAhead, index: int, header: SafetensorsHeader):
        self.reader, self.index, self.header = reader, index, header

    def take(self, entry: TensorEntry, start: int, length: int):
        return self.reader.take(self.index, self.header.data_start + entry.begin + start, length)


def _close_shard(writer: ShardWriter, sizes: dict[str, int]) -> None:
    writer.close()
    sizes[writer.path.name] = writer.bytes_written
    log.debug("wrote %s", writer.path.name)


def _emit(recipes: list[TensorRecipe], entry: TensorEntry, source: _Source, next_writer,
          workspace: Workspace, checked: CheckedOptions) -> None:
    """Write the output tensor(s) of one base tensor: raw bytes when nothing changes."""
    first = recipes[0]
    if _copied(entry, recipes):
        writer = next_writer()
        expected = writer.begin(first.name)
        if expected.nbytes != entry.nbytes:
            raise RuntimeError(f"{first.name}: expected {expected.nbytes} bytes, "
                               f"source has {entry.nbytes}")
        for start in range(0, entry.nbytes, COPY_PIECE_BYTES):
            piece = source.take(entry, start, min(COPY_PIECE_BYTES, entry.nbytes - start))
            writer.write_raw(piece.view, then=piece.release)
        return
    if grouped(entry, recipes, checked.settings, workspace.device):
        _merge_in_groups(first, entry, source, next_writer(), workspace)
        return
    piece = source.take(entry, 0, entry.nbytes)
    try:
        tensor_source = tensor_from_bytes(piece.view, entry)
        for recipe in recipes:
            if recipe.changed:
                tensor, fence = merge_tensor(recipe, tensor_source, checked.settings, workspace)
            else:  # a dtype conversion only
                tensor, fence = workspace.out_tensor(recipe.shape, DTYPES[recipe.dtype])
                tensor.copy_(tensor_source)
            next_writer().write_tensor(recipe.name, tensor, fence=fence)
    finally:
        piece.release()  # the merge above read it synchronously


def _merge_in_groups(recipe: TensorRecipe, entry: TensorEntry, source: _Source,
                     writer: ShardWriter, workspace: Workspace) -> None:
    """Merge and queue for writing a group of rows at a time, as ReadAhead delivers them."""
    writer.begin(recipe.name)
    rows, cols = recipe.shape
    merged = BlockedRows(recipe, DTYPES[entry.dtype], workspace)
    row_bytes = cols * DTYPES[entry.dtype].itemsize
    step = group_rows(cols)
    for first in range(0, rows, step):
        last = min(first + step, rows)
        piece = source.take(entry, first * row_bytes, (last - first) * row_bytes)
        try:
            base = torch.frombuffer(piece.view, dtype=DTYPES[entry.dtype]).view(last - first, cols)
            out, fence = workspace.out_tensor((last - first, cols), merged.out_dtype)
            merged.merge(first, base, out)
        finally:
            piece.release()
        writer.write_part(out, fence=fence)


def _write_index(staging: Path, layout: MergeLayout, shards, names) -> int:
    weight_map = {t.name: name for name, shard in zip(names, shards, strict=True) for t in shard}
    index = {"metadata": {"total_size": sum(t.nbytes for t in layout.outputs)},
             "weight_map": dict(sorted(weight_map.items()))}
    path = staging / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path.stat().st_size
