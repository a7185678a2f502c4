"""The artifact digest: sha256 over the sorted (path, sha256) list of its files; stdlib only.

Files are hashed several at a time with large reads: sha256 runs at about 1-2 GB/s per
core and releases the GIL, so one file at a time leaves the disk and the other cores idle.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorafuse.errors import UserError

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
READ_BYTES = 16 * 1024 * 1024
MAX_PARALLEL_FILES = 8


@dataclass
class ArtifactScan:
    digest: str  # "sha256:<hex>"
    bytes: int
    files: dict[str, str]  # relative posix path -> sha256 hex


def scan_artifact(directory: Path) -> ArtifactScan:
    """Hash every file under `directory`. The digest covers names and contents, nothing else.

    The hashed text is what `sha256sum` prints for the sorted files ("<hex>  <path>" lines),
    so the digest can be recomputed by hand. Links are refused: an artifact holds plain files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: artifact directory not found")
    paths = _regular_files(directory)
    # largest first, so the longest hash starts at once and the small files fill the gaps
    order = sorted(paths, key=lambda name: -paths[name])
    workers = max(1, min(MAX_PARALLEL_FILES, os.cpu_count() or 1, len(order)))
    with ThreadPoolExecutor(workers, thread_name_prefix="lorafuse-verify") as pool:
        hashes = pool.map(lambda name: _sha256(directory / name), order)
        files = dict(zip(order, hashes, strict=True))
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    digest = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    return ArtifactScan(digest=digest, bytes=sum(paths.values()), files=dict(sorted(files.items())))


def _regular_files(directory: Path) -> dict[str, int]:
    """Relative posix path -> size of every file; links and special files are refused."""
    sizes: dict[str, int] = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
            path = Path(root, name)
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink() or not path.is_file():
                raise UserError(f"{directory}: {relative} is not a regular file")
            sizes[relative] = path.stat().st_size
    return sizes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()


def artifact_digest(directory: Path) -> str:
    return scan_artifact(directory).digest


def verify_artifact(directory: Path, expected: str) -> ArtifactScan:
    """Raise UserError unless the artifact's digest is `expected`."""
    if not DIGEST_PATTERN.match(expected or ""):
        raise UserError(f"--digest {expected!r}: expected sha256:<64 hex digits>")
    scan = scan_artifact(directory)
    if scan.digest != expected:
        raise UserError(f"{directory}: digest mismatch (expected {expected}, found {scan.digest})")
    return scan
