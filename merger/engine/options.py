"""What a merge is asked to do: MergeOptions checked into settings, and the MergeResult."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafuse.errors import UserError
from lorafuse.merger.engine.choices import (
    COMBINE_METHODS,
    OUTPUT_DTYPES,
    CombineMethod,
    OutputDtype,
)
from lorafuse.merger.engine.tensor_math import CombineSettings

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class MergeOptions:
    """One merge as the command line or the Job asks for it."""

    base: Path
    adapters: list[Path]
    out: Path
    weights: list[float] | None = None  # default 1.0 each
    combine: CombineMethod = "linear"
    density: float | None = None
    seed: int = 0
    dtype: OutputDtype = "auto"
    shard_size: str = "5GB"
    device: str = "cpu"
    allow_pickle: bool = False
    adapter_names: list[str] | None = None  # default: folder names
    extra_provenance: dict = field(default_factory=dict)  # merged into lorafuse.json


@dataclass
class MergeResult:
    """Where the merged model is, and whether an identical earlier merge was kept."""

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
class CheckedOptions:
    """MergeOptions after checking: absolute paths, adapter names, weights, sizes."""

    base: Path
    adapters: list[Path]
    names: list[str]
    weights: list[float]
    shard_bytes: int
    device: torch.device
    settings: CombineSettings


def check_options(options: MergeOptions) -> CheckedOptions:
    """The options, checked: each mistake is one UserError naming its flag."""
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
    if options.combine not in COMBINE_METHODS:
        raise UserError(f"--combine {options.combine!r}: expected one of "
                        f"{', '.join(COMBINE_METHODS)}")
    if options.combine != "linear" and options.density is None:
        raise UserError(f"--combine {options.combine} needs --density (fraction kept, 0 < D <= 1)")
    if options.density is not None and not 0 < options.density <= 1:
        raise UserError(f"--density {options.density}: must be in (0, 1]")
    if options.dtype not in OUTPUT_DTYPES:
        raise UserError(f"--dtype {options.dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
    _refuse_out_in_inputs(Path(options.out), [Path(options.base), *map(Path, options.adapters)])
    return CheckedOptions(
        base=Path(options.base).absolute(),
        adapters=[Path(p).absolute() for p in options.adapters],
        names=names,
        weights=weights,
        shard_bytes=parse_size(options.shard_size),
        device=_device(options.device),
        settings=CombineSettings(options.combine, options.density, int(options.seed)),
    )


def _refuse_out_in_inputs(out: Path, inputs: list[Path]) -> None:
    """Writing into an input would change what is being read (and what its hash says)."""
    real_out = out.resolve()
    for folder in inputs:
        real_in = folder.resolve()
        if real_out == real_in or real_out.is_relative_to(real_in):
            raise UserError(f"--out {out}: is inside the input folder {folder}; "
                            "write the merge somewhere else")


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return torch.device(name)
