"""The streaming merge: base shards in, merged shards out, one tensor in memory at a time."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.merger.engine.adapters import load_adapter
from lorafuse.merger.engine.basemodel import load_base
from lorafuse.merger.engine.layout import lay_out_merge
from lorafuse.merger.engine.options import (
    CheckedOptions,
    MergeOptions,
    MergeResult,
    check_options,
)
from lorafuse.merger.engine.patterns import module_names
from lorafuse.merger.engine.provenance import PROVENANCE_NAME, write_provenance
from lorafuse.merger.engine.record import provenance_record, reuse_existing
from lorafuse.merger.engine.side_files import write_side_files
from lorafuse.merger.engine.stream import write_weights
from lorafuse.merger.files.atomic import TargetExists, staging_dir
from lorafuse.merger.files.background import collector_paused
from lorafuse.merger.files.hashing import FileHasher, merge_inputs

__all__ = ["MergeOptions", "MergeResult", "merge"]

log = logging.getLogger(__name__)


def merge(options: MergeOptions, hasher: FileHasher | None = None) -> MergeResult:
    """Merge the adapters into the base and publish the result atomically at options.out.

    `hasher` may have started hashing the inputs (`merge_inputs`) before this was called;
    it is closed on return."""
    try:
        checked = check_options(options)
        if hasher is None:
            hasher = FileHasher(*merge_inputs(checked.base, checked.adapters))
        with collector_paused():
            return _merge(options, checked, hasher)
    finally:
        if hasher is not None:
            hasher.close()


def _merge(options: MergeOptions, checked: CheckedOptions, hasher: FileHasher) -> MergeResult:
    out = Path(options.out).absolute()
    if out.exists() or out.is_symlink():
        return reuse_existing(out, options, checked, hasher)
    base = load_base(checked.base)
    base_modules = module_names(base.locations)
    adapters = [load_adapter(path, name, options.allow_pickle, hasher.digest, base_modules)
                for path, name in zip(checked.adapters, checked.names, strict=True)]
    layout = lay_out_merge(base, adapters, checked.weights, options.combine, options.dtype)
    log.info("merging %d adapter(s) into %s: %d of %d tensors change", len(adapters),
             base.path, layout.tensors_merged, len(layout.outputs))
    try:
        with staging_dir(out) as staging:
            outputs = write_weights(base, layout, staging, checked, hasher)
            # the base shards were hashed as the merge read them, each checked unchanged since
            base_hashes = {h.path.name: hasher.digest(h.path) for h in base.headers}
            base_hashes.update(write_side_files(base, layout, staging, outputs))
            provenance = provenance_record(base, adapters, layout, options, checked,
                                           base_hashes, outputs)
            write_provenance(staging, provenance)
    except TargetExists:  # a concurrent run published first: keep it if it is this merge
        return reuse_existing(out, options, checked, hasher)
    except OSError as exc:
        error = _disk_error(exc, out)
        if error is None:
            raise
        raise error from exc
    total = sum(outputs.values()) + (out / PROVENANCE_NAME).stat().st_size
    log.info("wrote %s (%.1f MB)", out, total / 1e6)
    return MergeResult(out, False, layout.tensors_merged, total, provenance)


def _disk_error(exc: OSError, out: Path) -> UserError | None:
    """Problems of the output location are the user's to fix; others are internal errors."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
        return UserError(f"{out.parent}: cannot write the merged model ({exc.strerror}); "
                         "nothing was published")
    return None
