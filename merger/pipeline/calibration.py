"""Calibration sets for quantization: JSONL of {"text"} or {"prompt"} lines, with their digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.jsonl import read_records, text_field

TEXT_KEYS = ("text", "prompt")


@dataclass
class CalibrationSet:
    path: Path
    sha256: str  # of the file as given
    texts: list[str]  # the first `samples` records, in file order
    seq_len: int

    @property
    def samples(self) -> int:
        return len(self.texts)

    def provenance(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "samples": self.samples,
            "seq_len": self.seq_len,
        }


def load_calibration(path: Path, samples: int, seq_len: int) -> CalibrationSet:
    """The first `samples` texts of `path`; fewer lines than asked for is an error, not a guess."""
    path = Path(path)
    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    if seq_len < 16:
        raise UserError(f"--seq-len {seq_len}: must be at least 16")
    records = read_records(path, "calibration")
    texts = [text_field(path, number, record, TEXT_KEYS) for number, record in records]
    if len(texts) < samples:
        raise UserError(
            f"{path}: {len(texts)} calibration samples, {samples} asked for "
            "(add lines or lower --samples / quantization.samples)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return CalibrationSet(path=path, sha256=digest, texts=texts[:samples], seq_len=seq_len)
