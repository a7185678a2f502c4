"""Atomic publishing of a directory: build it in a staging sibling, rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lorafuse.errors import UserError

_STAGING_TAG = ".lorafuse-staging-"


def _staging_prefix(out: Path) -> str:
    return f".{out.name}{_STAGING_TAG}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove staging dirs for `out` left by runs that were killed (their pid is gone)."""
    prefix = _staging_prefix(out)
    if not out.parent.is_dir():
        return
    for candidate in out.parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chmod_default(directory: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; publish with the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """Yield an empty sibling dir of `out`; on success rename it to `out`, else remove it.

    A process killed mid-way leaves only a hidden `.NAME.lorafuse-staging-PID-*` sibling
    (removed by the next run for the same `out`), never a partial `out`.
    """
    out = Path(out)
    if out.exists():
        raise UserError(f"{out}: already exists")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create ({exc.strerror})") from exc
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_staging_prefix(out)}{os.getpid()}-"))
    try:
        yield staging
        _chmod_default(staging)
        fsync_dir(staging)
        try:
            os.rename(staging, out)
        except OSError as exc:
            raise UserError(f"{out}: cannot publish ({exc.strerror}); it may have been "
                            "created by another process meanwhile") from exc
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
