"""The merge's record (lorafuse.json), and an existing output kept only if it is this merge."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lorafuse import __version__
from lorafuse.errors import UserError
from lorafuse.merger.engine.adapters import Adapter
from lorafuse.merger.engine.basemodel import BaseCheckpoint
from lorafuse.merger.engine.combine import RANDOM_METHODS
from lorafuse.merger.engine.layout import MergeLayout
from lorafuse.merger.engine.options import CheckedOptions, MergeOptions, MergeResult
from lorafuse.merger.engine.provenance import (
    PROVENANCE_NAME,
    deep_merge,
    read_provenance,
    utc_now,
)
from lorafuse.merger.files.hashing import FileHasher

log = logging.getLogger(__name__)

DTYPE_BY_CODE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _base_revision(path: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot (.../snapshots/<sha>/)."""
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
        return path.name
    return None


def _resolved_dtype(base: BaseCheckpoint, layout: MergeLayout, requested: str) -> str:
    if requested != "auto":
        return requested
    codes = [t.dtype for t in layout.outputs if t.dtype in DTYPE_BY_CODE]
    return DTYPE_BY_CODE[max(set(codes), key=codes.count)] if codes else "auto"


def _choices(options: MergeOptions, checked: CheckedOptions) -> dict:
    """What the user chose; an existing output is this merge only if these match."""
    return {
        "combine": {"method": options.combine, "weights": checked.weights,
                    "density": options.density,
                    "seed": options.seed if options.combine in RANDOM_METHODS else None},
        "adapters": checked.names,
        "dtype_option": options.dtype,
        "shard_size": checked.shard_bytes,
    }


def provenance_record(base: BaseCheckpoint, adapters: list[Adapter], layout: MergeLayout,
                      options: MergeOptions, checked: CheckedOptions, base_hashes: dict[str, str],
                outputs: dict[str, int]) -> dict:
    choices = _choices(options, checked)
    data = {
        "lorafuse_version": __version__,
        "created": utc_now(),
        "base": {"source": str(base.path), "path": str(base.path),
                 "revision": _base_revision(base.path), "files": dict(sorted(base_hashes.items()))},
        "adapters": [
            {"name": a.name, "source": str(a.path), "weight": w, "files": a.files,
             **({"training_run": a.training_run} if a.training_run else {})}
            for a, w in zip(adapters, checked.weights, strict=True)
        ],
        "combine": choices["combine"],
        "dtype": _resolved_dtype(base, layout, options.dtype),
        "quantization": None,
        "validation": None,
        "merge": {
            "dtype_option": options.dtype,
            "shard_size": checked.shard_bytes,
            "device": str(checked.device),
            "tensors_merged": layout.tensors_merged,
            "config_updates": layout.config_updates,
            "tokenizer_from": layout.tokenizer_from.name if layout.tokenizer_from else "base",
            "outputs": dict(sorted(outputs.items())),
        },
    }
    return deep_merge(data, options.extra_provenance or {})


def reuse_existing(out: Path, options: MergeOptions, checked: CheckedOptions,
                    hasher: FileHasher) -> MergeResult:
    """An identical complete artifact is verified and kept; anything else is left untouched."""
    if not out.is_dir() or not (out / PROVENANCE_NAME).is_file():
        raise UserError(f"{out}: already exists and is not a lorafuse artifact; "
                        "refusing to overwrite it")
    recorded = read_provenance(out)
    differences = _differences(recorded, out, options, checked, hasher)
    if differences:
        raise UserError(f"{out}: already holds a different merge ({differences}); "
                        "remove it or choose another --out")
    log.info("%s already holds this merge (inputs verified); not rewriting it", out)
    merge_info = recorded.get("merge", {})
    return MergeResult(out, True, int(merge_info.get("tensors_merged", 0)), 0, recorded)


def _differences(recorded: dict, out: Path, options: MergeOptions, checked: CheckedOptions,
                 hasher: FileHasher) -> str:
    choices = _choices(options, checked)
    merge_info = recorded.get("merge") or {}
    stored = {
        "combine": recorded.get("combine"),
        "adapters": [a.get("name") for a in recorded.get("adapters") or []],
        "dtype_option": merge_info.get("dtype_option"),
        "shard_size": merge_info.get("shard_size"),
    }
    changed = [key for key in choices if choices[key] != stored[key]]
    if changed:
        return "different " + ", ".join(changed)
    base_files = (recorded.get("base") or {}).get("files") or {}
    if _changed_files(checked.base, base_files, hasher):
        return f"base {checked.base} changed"
    for path, entry in zip(checked.adapters, recorded.get("adapters") or [], strict=False):
        if _changed_files(path, entry.get("files") or {}, hasher):
            return f"adapter {path} changed"
    for name, size in (merge_info.get("outputs") or {}).items():
        file = out / name
        if not file.is_file() or file.stat().st_size != size:
            return f"{name} is missing or incomplete"
    return "" if merge_info.get("outputs") else "no record of its output files"


def _changed_files(directory: Path, files: dict[str, str], hasher: FileHasher) -> bool:
    if not files:
        return True
    for name, digest in files.items():
        path = directory / name
        if not path.is_file() or hasher.digest(path) != digest:
            return True
    return False
