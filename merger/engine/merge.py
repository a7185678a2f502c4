"""The streaming merge: base shards in, merged shards out, one tensor in memory at a time."""

from __future__ import annotations

import errno
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafuse import __version__
from lorafuse.errors import UserError
from lorafuse.merger.engine.adapters import TOKENIZER_FILES, Adapter, load_adapter
from lorafuse.merger.engine.basemodel import INDEX_NAME, BaseCheckpoint, load_base
from lorafuse.merger.engine.combine import METHODS, RANDOM_METHODS
from lorafuse.merger.engine.layout import MergeLayout, plan_merge
from lorafuse.merger.engine.provenance import (
    PROVENANCE_NAME,
    deep_merge,
    read_provenance,
    sha256_file,
    utc_now,
    write_provenance,
)
from lorafuse.merger.engine.tensor_math import (
    BlockedRows,
    CombineSettings,
    Workspace,
    group_rows,
    grouped,
    merge_tensor,
    reserve_for,
    torch_threads,
)
from lorafuse.merger.files.atomic import staging_dir
from lorafuse.merger.files.background import OrderedIO, RowPool, collector_paused, worker_count
from lorafuse.merger.files.hashing import FileHasher, merge_inputs
from lorafuse.merger.files.shards import (
    DTYPES,
    ShardReader,
    ShardWriter,
    plan_shards,
    shard_file_names,
    tensor_from_bytes,
)
from lorafuse.progress import Progress

log = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
DTYPE_BY_CODE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class MergeOptions:
    base: Path
    adapters: list[Path]
    out: Path
    weights: list[float] | None = None  # default 1.0 each
    combine: str = "linear"  # linear|ties|dare_linear|dare_ties
    density: float | None = None
    seed: int = 0
    dtype: str = "auto"  # auto|bfloat16|float16|float32
    shard_size: str = "5GB"
    device: str = "cpu"
    allow_pickle: bool = False
    adapter_names: list[str] | None = None  # default: folder names
    extra_provenance: dict = field(default_factory=dict)  # merged into lorafuse.json


@dataclass
class MergeResult:
    out: Path
    reused: bool
    tensors_merged: int
    bytes_written: int
    provenance: dict


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20 (the units of transformers' max_shard_size)."""
    match = _SIZE.match(str(text))
    unit = match[2].upper() if match else ""
    if not match or unit not in _UNITS:
        raise UserError(f"--shard-size {text!r}: expected a size such as 5GB or 500MiB")
    size = int(float(match[1]) * _UNITS[unit])
    if size <= 0:
        raise UserError(f"--shard-size {text!r}: must be positive")
    return size


@dataclass
class _Checked:
    base: Path
    adapters: list[Path]
    names: list[str]
    weights: list[float]
    shard_bytes: int
    device: torch.device
    settings: CombineSettings


def _check_options(options: MergeOptions) -> _Checked:
    if not options.adapters:
        raise UserError("--adapter: at least one adapter is required")
    count = len(options.adapters)
    weights = [1.0] * count if options.weights is None else [float(w) for w in options.weights]
    if len(weights) != count:
        raise UserError(f"--weights: {len(weights)} weights for {count} adapters")
    names = list(options.adapter_names or [])
    if not names:
        names = [Path(p).absolute().name for p in options.adapters]
        if len(set(names)) != count:  # same folder name in different places
            names = [f"{name}-{i}" for i, name in enumerate(names, start=1)]
    if len(names) != count or len(set(names)) != count:
        raise UserError(f"adapter names {names}: need {count} distinct names")
    if options.combine not in METHODS:
        raise UserError(f"--combine {options.combine!r}: expected one of {', '.join(METHODS)}")
    if options.combine != "linear" and options.density is None:
        raise UserError(f"--combine {options.combine} needs --density (fraction kept, 0 < D <= 1)")
    if options.density is not None and not 0 < options.density <= 1:
        raise UserError(f"--density {options.density}: must be in (0, 1]")
    if options.dtype not in DTYPE_CHOICES:
        raise UserError(f"--dtype {options.dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    return _Checked(
        base=Path(options.base).absolute(),
        adapters=[Path(p).absolute() for p in options.adapters],
        names=names,
        weights=weights,
        shard_bytes=parse_size(options.shard_size),
        device=_device(options.device),
        settings=CombineSettings(options.combine, options.density, int(options.seed)),
    )


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def merge(options: MergeOptions, hasher: FileHasher | None = None) -> MergeResult:
    """Merge the adapters into the base and publish the result atomically at options.out.

    `hasher` may have started hashing the inputs (`merge_inputs`) before this was called;
    it is closed on return."""
    try:
        checked = _check_options(options)
        if hasher is None:
            hasher = FileHasher(merge_inputs(checked.base, checked.adapters))
        with collector_paused():
            return _merge(options, checked, hasher)
    finally:
        if hasher is not None:
            hasher.close()


def _merge(options: MergeOptions, checked: _Checked, hasher: FileHasher) -> MergeResult:
    out = Path(options.out).absolute()
    if out.exists() or out.is_symlink():
        return _reuse_existing(out, options, checked, hasher)
    base = load_base(checked.base)
    adapters = [load_adapter(path, name, options.allow_pickle, hasher.digest)
                for path, name in zip(checked.adapters, checked.names, strict=True)]
    layout = plan_merge(base, adapters, checked.weights, options.combine, options.dtype)
    log.info("merging %d adapter(s) into %s: %d of %d tensors change", len(adapters),
             base.path, layout.tensors_merged, len(layout.outputs))
    try:
        with staging_dir(out) as staging:
            outputs = _write_weights(base, layout, staging, checked)
            # the base shards were hashed beside the merge, each checked unchanged since
            base_hashes = {h.path.name: hasher.digest(h.path) for h in base.headers}
            base_hashes.update(_write_other_files(base, layout, staging, outputs))
            provenance = _provenance(base, adapters, layout, options, checked, base_hashes,
                                     outputs)
            write_provenance(staging, provenance)
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


def _write_weights(base: BaseCheckpoint, layout: MergeLayout, staging: Path,
                   checked: _Checked) -> dict[str, int]:
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
            checked: _Checked) -> dict[str, int]:
    shards = plan_shards(layout.outputs, checked.shard_bytes)
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
        raise RuntimeError(f"{len(pending)} planned shards were not written")
    if len(shards) > 1:
        sizes[INDEX_NAME] = _write_index(staging, layout, shards, names)
    return sizes


def _close_shard(writer: ShardWriter, sizes: dict[str, int]) -> None:
    writer.close()
    sizes[writer.path.name] = writer.bytes_written
    log.debug("wrote %s", writer.path.name)


def _emit(plans: list, entry, reader: ShardReader, next_writer, workspace: Workspace,
          checked: _Checked) -> None:
    """Write the output tensor(s) of one base tensor: raw bytes when nothing changes."""
    first = plans[0]
    if len(plans) == 1 and not first.changed and first.dtype == entry.dtype:
        next_writer().copy_from(first.name, reader, entry)
        return
    if grouped(entry, plans, checked.settings, workspace.device):
        _merge_in_groups(first, entry, reader, next_writer(), workspace)
        return
    source = tensor_from_bytes(reader.read(entry, workspace.read_buffer(entry.nbytes)), entry)
    for plan in plans:
        if plan.changed:
            tensor, fence = merge_tensor(plan, source, checked.settings, workspace)
        else:  # a dtype conversion only
            tensor, fence = workspace.out_tensor(plan.shape, DTYPES[plan.dtype])
            tensor.copy_(source)
        next_writer().write_tensor(plan.name, tensor, fence=fence)


def _merge_in_groups(plan, entry, reader: ShardReader, writer: ShardWriter,
                     workspace: Workspace) -> None:
    """Read, merge and queue for writing a group of rows at a time."""
    writer.begin(plan.name)
    rows, cols = plan.shape
    merged = BlockedRows(plan, DTYPES[entry.dtype], workspace)
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


def _write_other_files(base: BaseCheckpoint, layout: MergeLayout, staging: Path,
                       sizes: dict[str, int]) -> dict[str, str]:
    """config.json (updated), generation config, tokenizer, chat template and the rest."""
    hashes = {base.config_file.name: sha256_file(base.config_file)}
    config = dict(base.config)
    config.update(layout.config_updates)
    if "dtype" in layout.config_updates and "torch_dtype" in config:
        config["torch_dtype"] = layout.config_updates["dtype"]
    config_out = staging / "config.json"
    config_out.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    sizes["config.json"] = config_out.stat().st_size
    tokenizer = layout.tokenizer_from
    for path in base.other_files():
        if tokenizer is not None and path.name in TOKENIZER_FILES:
            continue
        hashes[path.name] = _copy_hashed(path, staging / path.name)
        sizes[path.name] = path.stat().st_size
    if tokenizer is not None:
        for path in tokenizer.tokenizer_files:
            _copy_hashed(path, staging / path.name)
            sizes[path.name] = path.stat().st_size
    return hashes


def _copy_hashed(source: Path, target: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(16 << 20):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


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


def _recipe(options: MergeOptions, checked: _Checked) -> dict:
    return {
        "combine": {"method": options.combine, "weights": checked.weights,
                    "density": options.density,
                    "seed": options.seed if options.combine in RANDOM_METHODS else None},
        "adapters": checked.names,
        "dtype_option": options.dtype,
        "shard_size": checked.shard_bytes,
    }


def _provenance(base: BaseCheckpoint, adapters: list[Adapter], layout: MergeLayout,
                options: MergeOptions, checked: _Checked, base_hashes: dict[str, str],
                outputs: dict[str, int]) -> dict:
    recipe = _recipe(options, checked)
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
        "combine": recipe["combine"],
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


def _reuse_existing(out: Path, options: MergeOptions, checked: _Checked,
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


def _differences(recorded: dict, out: Path, options: MergeOptions, checked: _Checked,
                 hasher: FileHasher) -> str:
    recipe = _recipe(options, checked)
    merge_info = recorded.get("merge") or {}
    stored = {
        "combine": recorded.get("combine"),
        "adapters": [a.get("name") for a in recorded.get("adapters") or []],
        "dtype_option": merge_info.get("dtype_option"),
        "shard_size": merge_info.get("shard_size"),
    }
    changed = [key for key in recipe if recipe[key] != stored[key]]
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
