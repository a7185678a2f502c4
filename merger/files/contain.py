"""Paths kept inside their source folder: no `..`, no absolute names, no links leaving it."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from lorafuse.errors import UserError


def relative_name(name: object, where: str) -> PurePosixPath:
    """A file name listed in an input (e.g. an index's weight_map): relative, without `..`."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UserError(f"{where}: {name!r} is not a file name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise UserError(f"{where}: {name!r} leaves the model folder (absolute or '..')")
    return path


def allowed_roots(folder: Path) -> list[Path]:
    """Where the files of `folder` may really live: the folder itself, and for a Hugging Face
    cache snapshot (REPO/snapshots/REV/) the same repository's blobs/ (its files link there)."""
    roots = [Path(os.path.realpath(folder))]
    folder = Path(folder).absolute()
    if folder.parent.name == "snapshots":
        roots.append(Path(os.path.realpath(folder.parent.parent / "blobs")))
    return roots


def contained_file(path: Path, folder: Path) -> Path:
    """`path` (inside `folder`) if it is a regular file that really lives in `folder`
    (links are followed only within it, or to its Hugging Face cache blobs)."""
    real = Path(os.path.realpath(path))
    if not any(real == root or real.is_relative_to(root) for root in allowed_roots(folder)):
        raise UserError(f"{path}: links outside {folder} (to {real}); refusing to read it")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file")
    return path

