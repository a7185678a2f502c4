"""The files beside the weights: config.json updated, tokenizer and the rest copied and hashed."""

from __future__ import annotations

import json
from pathlib import Path

from lorafuse.merger.engine.adapters import TOKENIZER_FILES
from lorafuse.merger.engine.basemodel import BaseCheckpoint
from lorafuse.merger.engine.layout import MergeLayout
from lorafuse.merger.engine.provenance import sha256_file


def write_side_files(base: BaseCheckpoint, layout: MergeLayout, staging: Path,
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
