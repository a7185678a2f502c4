"""Removing superseded artifacts and their work directories from the model volume, safely.

    ROOT/artifacts/NAME/                      the published artifact (its lorafuse.json names
                                              the plan it was made for)
    ROOT/artifacts/.NAME.lorafuse-staging-*   a publish in progress (locked) or a crash's leftover
    ROOT/work/NAME/                           the Job's work directory (plan.json names the plan)

Every target is checked before anything is removed: a name that is not one folder name, a
folder that is a link, or one whose records name another plan refuses the whole run. A
folder goes first by a rename to a hidden, locked `.NAME.lorafuse-pruning-*` sibling, so no
half-removed artifact keeps its name; a crashed run's leftovers go with the next run. A Job
step holds a shared lock on its work directory (`hold_in_use`) and a publish locks its
staging directory: a target that either holds is left for a later run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.jsonfile import read_json
from lorafuse.merger.files.atomic import _STAGING_TAG, _try_lock
from lorafuse.merger.files.contain import contained_file

ARTIFACTS = "artifacts"
WORK = "work"
PROVENANCE = "lorafuse.json"
WORK_PLAN = "plan.json"
PRUNING_TAG = ".lorafuse-pruning-"
# What MergePlan.artifact_name() makes: readable parts and the plan hash, one folder name.
NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.@]{0,254}$")
# The plan's content hash, or its first 12 or more digits (status keeps 16).
PLAN_HASH = re.compile(r"^[0-9a-f]{12,64}$")


@dataclass(frozen=True)
class Target:
    """An artifact to remove and the plan (content hash or its prefix) its records name."""

    name: str
    plan_hash: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """NAME=PLAN_HASH, as `lorafuse prune --artifact` takes it."""
        name, sep, plan_hash = text.rpartition("=")
        if not sep:
            raise UserError(f"--artifact {text!r}: expected NAME=PLAN_HASH")
        if not PLAN_HASH.match(plan_hash):
            raise UserError(f"--artifact {text!r}: plan hash is not 12 to 64 hex digits")
        if not NAME.match(name) or ".." in name:
            raise UserError(f"--artifact {name!r}: not an artifact name (one folder name)")
        if not name.endswith(f"--{plan_hash[:12]}"):
            raise UserError(f"--artifact {name!r}: not named for plan {plan_hash[:12]}")
        return cls(name, plan_hash)


@dataclass
class Report:
    pruned: list[str] = field(default_factory=list)  # removed now, or already gone
    busy: list[str] = field(default_factory=list)  # a Job step or a publish holds it
    reclaimed_bytes: int = 0


@dataclass(frozen=True)
class _Checked:
    target: Target
    folders: list[Path]  # the target's existing folders: artifact, work directory, staging


def prune(root: Path, targets: list[Target]) -> Report:
    """Remove each target's artifact, staging leftovers and work directory under `root`."""
    volume = _volume(root)
    parents = [p for p in (_parent(volume, ARTIFACTS), _parent(volume, WORK)) if p is not None]
    checked = [_check(target, volume) for target in targets]  # refusals before any removal
    report = Report()
    for parent in parents:
        report.reclaimed_bytes += _remove_leftovers(parent)
    for item in checked:
        with _held(item) as locks:
            if locks is None:
                report.busy.append(item.target.name)
                continue
            report.reclaimed_bytes += _remove(item.folders)
            report.pruned.append(item.target.name)
    return report


def hold_in_use(directory: Path) -> int | None:
    """A shared lock on a work directory for as long as this process lives (prune leaves it
    alone); None when the directory is gone meanwhile (a prune removed it: claim it again)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{directory}: cannot open the work directory ({exc.strerror})") from None
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        same = os.stat(directory).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # renamed away for removal while we waited for the lock
        os.close(fd)
        return None
    return fd


# --- checks -----------------------------------------------------------------------------


def _volume(root: Path) -> Path:
    real = Path(os.path.realpath(root))
    if not real.is_dir():
        raise UserError(f"{root}: not a directory (the model volume's root)")
    return real


def _parent(volume: Path, name: str) -> Path | None:
    """ROOT/artifacts or ROOT/work: a real directory on the volume, or absent."""
    path = volume / name
    mode = _mode(path)
    if mode is None:
        return None
    if not stat.S_ISDIR(mode):
        raise UserError(f"{path}: not a directory (a link or a file); refusing to prune in it")
    return path


def _mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def _check(target: Target, volume: Path) -> _Checked:
    """The target's folders, each a real directory inside the volume whose record names the
    target's plan; anything else is a UserError (nothing has been removed yet)."""
    folders = []
    for parent, record in ((ARTIFACTS, PROVENANCE), (WORK, WORK_PLAN)):
        folder = volume / parent / target.name
        mode = _mode(folder)
        if mode is None:
            continue
        if not stat.S_ISDIR(mode):
            raise UserError(f"{folder}: not a directory (a link or a file); refusing to remove it")
        if Path(os.path.realpath(folder)) != folder:
            raise UserError(f"{folder}: resolves outside {volume / parent}; refusing to remove it")
        _check_record(folder, record, target)
        folders.append(folder)
    return _Checked(target, folders + _staging(volume / ARTIFACTS, target.name))


def _check_record(folder: Path, record: str, target: Target) -> None:
    path = folder / record
    if _mode(path) is None and record == WORK_PLAN and not any(folder.iterdir()):
        return  # a work directory claimed by a step that died before writing plan.json
    data = read_json(contained_file(path, folder))
    recorded = data.get("content_hash")
    if record == PROVENANCE:
        plan = data.get("plan")
        recorded = plan.get("content_hash") if isinstance(plan, dict) else None
    if not isinstance(recorded, str) or not recorded.startswith(target.plan_hash):
        raise UserError(
            f"{folder}: {record} names plan {str(recorded)[:12]!r}, not "
            f"{target.plan_hash[:12]}; refusing to remove what is not this artifact"
        )


def _staging(artifacts: Path, name: str) -> list[Path]:
    if _mode(artifacts) is None:
        return []
    return sorted(p for p in artifacts.glob(f".{name}{_STAGING_TAG}*") if not p.is_symlink())


# --- removal ----------------------------------------------------------------------------


@contextlib.contextmanager
def _held(item: _Checked) -> Iterator[list[int] | None]:
    """Exclusive locks on every folder of the target, or None when one is in use."""
    locks: list[int] = []
    try:
        for folder in item.folders:
            fd = _try_lock(folder)
            if fd is None:
                if folder.exists():
                    yield None
                    return
                continue  # gone meanwhile: nothing to lock
            locks.append(fd)
        yield locks
    finally:
        for fd in locks:
            os.close(fd)


def _remove(folders: list[Path]) -> int:
    """Rename each folder to a hidden pruning sibling, count what is freed, remove them."""
    trash = []
    for folder in folders:
        hidden = folder.with_name(f".{folder.name.lstrip('.')}{PRUNING_TAG}{secrets.token_hex(4)}")
        try:
            os.rename(folder, hidden)
        except FileNotFoundError:
            continue
        trash.append(hidden)
    freed = _freed_bytes(trash)
    for hidden in trash:
        _rmtree(hidden)
    return freed


def _remove_leftovers(parent: Path) -> int:
    """Pruning folders of a run that died half-way (nobody holds their lock)."""
    freed = 0
    for hidden in sorted(parent.glob(f".*{PRUNING_TAG}*")):
        if hidden.is_symlink() or not hidden.is_dir():
            continue
        fd = _try_lock(hidden)
        if fd is None:
            continue  # another prune is removing it now
        try:
            freed += _freed_bytes([hidden])
            _rmtree(hidden)
        finally:
            os.close(fd)
    return freed


def _freed_bytes(trees: list[Path]) -> int:
    """File bytes that removing `trees` frees: a file counts once, and only when every hard
    link to it is inside them (publishing links the work directory's files into the artifact)."""
    seen: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [size, links, links seen]
    for tree in trees:
        for directory, _dirs, files in os.walk(tree):
            for name in files:
                try:
                    info = os.lstat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                entry = seen.setdefault(
                    (info.st_dev, info.st_ino), [info.st_size, info.st_nlink, 0]
                )
                entry[2] += 1
    return sum(size for size, links, found in seen.values() if found >= links)


def _rmtree(path: Path) -> None:
    """shutil.rmtree (which never follows links); a part another run removed is no error."""

    def gone(_function, _path, exc):
        error = exc if isinstance(exc, BaseException) else exc[1]
        if not (isinstance(error, OSError) and error.errno == errno.ENOENT):
            raise error

    shutil.rmtree(path, onerror=gone)
