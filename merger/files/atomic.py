"""Atomic publishing of a directory: build it in a staging sibling, rename it into place.

A staging directory is locked (flock on the directory itself) for as long as its writer
lives; the kernel drops the lock when the process dies, however it dies. A later run
removes the unlocked ones. PIDs cannot tell this: a Job step is PID 1 in every container.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.fsync import fsync_path

_STAGING_TAG = ".lorafuse-staging-"


class TargetExists(UserError):
    """Another process published the same path first (e.g. a second Job of one plan)."""


def _staging_prefix(out: Path) -> str:
    return f".{out.name}{_STAGING_TAG}"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if a live process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_staging(out: Path) -> None:
    """Remove staging dirs for `out` whose writer is gone (nobody holds their lock)."""
    if not out.parent.is_dir():
        return
    for candidate in out.parent.glob(f"{_staging_prefix(out)}*"):
        fd = _try_lock(candidate)
        if fd is None:
            continue
        try:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)


def _locked_staging(out: Path) -> tuple[Path, int]:
    """A new staging dir and the fd that holds its lock; retried if a cleaner removed it
    between its creation and the lock (it then looked stale)."""
    while True:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=_staging_prefix(out)))
        fd = _try_lock(staging)
        if fd is None:
            continue
        try:
            if os.stat(staging).st_ino == os.fstat(fd).st_ino:
                return staging, fd
        except FileNotFoundError:
            pass
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up: after a crash a published rename
    must not point at empty or short files."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(directory, name), follow_symlinks=False)
        fsync_path(directory)


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

    A process killed mid-way leaves only a hidden, unlocked `.NAME.lorafuse-staging-*`
    sibling (removed by the next run for the same `out`), never a partial `out`. Losing the
    rename to another process raises TargetExists.
    """
    out = Path(out)
    if out.exists():
        raise TargetExists(f"{out}: already exists")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create ({exc.strerror})") from exc
    remove_stale_staging(out)
    staging, lock = _locked_staging(out)
    try:
        yield staging
        _chmod_default(staging)
        fsync_tree(staging)
        _rename(staging, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _rename(staging: Path, out: Path) -> None:
    try:
        os.rename(staging, out)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise TargetExists(f"{out}: created by another process meanwhile") from exc
        raise UserError(f"{out}: cannot publish ({exc.strerror})") from exc
