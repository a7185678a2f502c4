"""The weights streamed: each base shard read once, each tensor copied or merged into its shard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lorafuse.merger.engine.basemodel import INDEX_NAME, BaseCheckpoint
from lorafuse.merger.engine.layout import MergeLayout
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
from lorafuse.merger.files.reader import DTYPES, ShardReader, tensor_from_bytes
from lorafuse.merger.files.writer import ShardWriter, group_into_shards, shard_file_names
from lorafuse.progress import Progress

log = logging.getLogger(__name__)


def write_weights(base: BaseCheckpoint, layout: MergeLayout, staging: Path,
                  checked: CheckedOptions) -> dict[str, int]:
    """Stream every base shard once, in file order: copy or merge each tensor."""
    io, pool = OrderedIO(), RowPool(worker_count())
    workspace = Workspace(checked.device, io, pool)
    try:
        # one kernel thread per worker: parallel row blocks beat threads inside small kernels
        with torch_threads(1):
            return _stream(base, layout, staging, workspace, checked)
    finally:
        io.close()
        pool.close()


def _stream(base: BaseCheckpoint, layout: MergeLayout, staging: Path, workspace: Workspace,
            checked: CheckedOptions) -> dict[str, int]:
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
                            for entry in header.tensors.values()], checked.settings)
    total = sum(h.file_size for h in base.headers)
    try:
        with Progress(total, "merging") as progress:
            for header in base.headers:
                reader = ShardReader(header, workspace.io)
                try:
                    progress.advance(header.data_start)
                    for entry in header.in_file_order():
                        _emit(layout.by_source[entry.name], entry, reader, next_writer,
                              workspace, checked)
                        progress.advance(entry.nbytes)
                finally:
                    reader.close()
        if current:
            _close_shard(current[0], sizes)
            current.pop()
    except BaseException:
        workspace.io.close()  # let queued writes stop before their files are closed
        for writer in current:
            writer.abort()
        raise
    if pending:
        raise RuntimeError(f"{len(pending)} shards were not written")
    if len(shards) > 1:
        sizes[INDEX_NAME] = _write_index(staging, layout, shards, names)
    return sizes


def _close_shard(writer: ShardWriter, sizes: dict[str, int]) -> None:
    writer.close()
    sizes[writer.path.name] = writer.bytes_written
    log.debug("wrote %s", writer.path.name)


def _emit(recipes: list, entry, reader: ShardReader, next_writer, workspace: Workspace,
          checked: CheckedOptions) -> None:
    """Write the output tensor(s) of one base tensor: raw bytes when nothing changes."""
    first = recipes[0]
    if len(recipes) == 1 and not first.changed and first.dtype == entry.dtype:
        next_writer().copy_from(first.name, reader, entry)
        return
    if grouped(entry, recipes, checked.settings, workspace.device):
        _merge_in_groups(first, entry, reader, next_writer(), workspace)
        return
    source = tensor_from_bytes(reader.read(entry, workspace.read_buffer(entry.nbytes)), entry)
    for recipe in recipes:
        if recipe.changed:
            tensor, fence = merge_tensor(recipe, source, checked.settings, workspace)
        else:  # a dtype conversion only
            tensor, fence = workspace.out_tensor(recipe.shape, DTYPES[recipe.dtype])
            tensor.copy_(source)
        next_writer().write_tensor(recipe.name, tensor, fence=fence)


def _merge_in_groups(recipe, entry, reader: ShardReader, writer: ShardWriter,
                     workspace: Workspace) -> None:
    """Read, merge and queue for writing a group of rows at a time."""
    writer.begin(recipe.name)
    rows, cols = recipe.shape
    merged = BlockedRows(recipe, DTYPES[entry.dtype], workspace)
    row_bytes = cols * DTYPES[entry.dtype].itemsize
    step = group_rows(cols)
    for first in range(0, rows, step):
        last = min(first + step, rows)
        data = reader.read_part(entry, first * row_bytes, last * row_bytes,
                                workspace.read_buffer((last - first) * row_bytes))
        base = torch.frombuffer(data, dtype=DTYPES[entry.dtype]).view(last - first, cols)
        out, fence = workspace.out_tensor((last - first, cols), merged.out_dtype)
        merged.merge(first, base, out)
        writer.write_part(out, fence=fence)


def _write_index(staging: Path, layout: MergeLayout, shards, names) -> int:
    weight_map = {t.name: name for name, shard in zip(names, shards, strict=True) for t in shard}
    index = {"metadata": {"total_size": sum(t.nbytes for t in layout.outputs)},
             "weight_map": dict(sorted(weight_map.items()))}
    path = staging / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path.stat().st_size
