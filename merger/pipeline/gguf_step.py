"""The quantize step for gguf-* methods: the GGUF exporter, and its checks at fetch time."""

from __future__ import annotations

from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.merger.engine.choices import GGUF_K_QUANTS


def check_gguf_export(method: str) -> None:
    """What the export needs is installed: the `gguf` package, and llama.cpp's quantizer for
    K-quants; checked in the first step, so a missing one fails before the merge."""
    import_exporter(method)
    if method in GGUF_K_QUANTS:
        from lorafuse.merger.gguf.kquants import find_quantizer

        find_quantizer(method)


def export(merged: Path, out: Path, method: str) -> None:
    """`out`/model.gguf, Modelfile and lorafuse.json (the merge's, with a quantization
    section), published atomically like every quantize output."""
    import_exporter(method).export_gguf(merged, out, method)


def import_exporter(method: str):
    """merger.gguf.export, or a UserError saying to install the `gguf` extra."""
    try:
        from lorafuse.merger.gguf import export
    except ImportError as exc:
        if exc.name != "gguf":
            raise
        raise UserError(f"{method}: the `gguf` package is not installed; "
                        "install lorafuse's `gguf` extra (pip install 'lorafuse[gguf]')") from None
    return export
