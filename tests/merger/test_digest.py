"""The artifact digest: what `sha256sum` prints for the sorted files, hashed in parallel."""

from __future__ import annotations

import hashlib
import os

import pytest

from lorafuse.errors import UserError
from lorafuse.merger.files.digest import scan_artifact, verify_artifact


def sha256sum_listing_digest(directory) -> str:
    lines = sorted(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory).as_posix()}\n"
        for p in directory.rglob("*") if p.is_file()
    )
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def test_parallel_digest_equals_the_sha256sum_listing(tmp_path):
    (tmp_path / "sub").mkdir()
    for index in range(12):
        (tmp_path / f"f{index:02d}.bin").write_bytes(os.urandom(index * 100_003))
    (tmp_path / "sub" / "config.json").write_text("{}")
    scan = scan_artifact(tmp_path)
    assert scan.digest == sha256sum_listing_digest(tmp_path)
    assert scan.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert list(scan.files) == sorted(scan.files)


def test_verify_refuses_a_changed_file(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    digest = scan_artifact(tmp_path).digest
    (tmp_path / "a").write_bytes(b"y" * 1000)
    with pytest.raises(UserError, match="digest mismatch"):
        verify_artifact(tmp_path, digest)


def test_a_link_in_an_artifact_is_refused(tmp_path):
    (tmp_path / "a").symlink_to("/proc/self/environ")
    with pytest.raises(UserError, match="not a regular file"):
        scan_artifact(tmp_path)
