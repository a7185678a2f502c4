"""fsync by path, for files and directories: what lets a write or a rename survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str, follow_symlinks: bool = True) -> None:
    flags = os.O_RDONLY if follow_symlinks else os.O_RDONLY | os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
