"""The artifact digest: sha256 over the sorted (path, sha256) list of its files; stdlib only."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lorafuse.errors import UserError

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


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
    files: dict[str, str] = {}
    total = 0
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
            path = Path(root, name)
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink() or not path.is_file():
                raise UserError(f"{directory}: {relative} is not a regular file")
            with path.open("rb") as handle:
                files[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
            total += path.stat().st_size
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    digest = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    return ArtifactScan(digest=digest, bytes=total, files=files)


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
