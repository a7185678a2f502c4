"""Atomic publishing: killed runs leave nothing at --out, re-runs verify, errors clean up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.merger.helpers import merge_cli


def lorafuse_command(*args) -> list[str]:
    return [sys.executable, "-c", "import sys; from lorafuse.cli import main; sys.exit(main())",
            *map(str, args)]


def staging_dirs(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.lorafuse-staging-*"))


def test_sigkill_mid_merge_leaves_nothing_at_out(medium_model, tmp_path):
    base, adapter = medium_model
    out = tmp_path / "out"
    process = subprocess.Popen(
        lorafuse_command("merge", "--base", base, "--adapter", adapter, "--out", out,
                         "--shard-size", "1MB"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        shards = [p for d in staging_dirs(out) for p in d.glob("*.safetensors")]
        if shards:  # writing has begun
            break
        time.sleep(0.005)
    assert process.poll() is None, "merge finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    assert staging_dirs(out), "the killed run's staging dir should be what is left"
    # the next run for the same --out removes the dead run's leftovers and publishes
    assert merge_cli(base, [adapter], out, "--shard-size", "1MB") == 0
    assert (out / "lorafuse.json").is_file()
    assert not staging_dirs(out)


def test_sigterm_removes_the_staging_dir(medium_model, tmp_path):
    base, adapter = medium_model
    out = tmp_path / "out"
    process = subprocess.Popen(
        lorafuse_command("merge", "--base", base, "--adapter", adapter, "--out", out,
                         "--shard-size", "2MB"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not staging_dirs(out):
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert not out.exists() and not staging_dirs(out)


def test_rerun_on_identical_artifact_verifies_without_rewriting(tiny_base, tiny_adapter, tmp_path,
                                                                capsys):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert merge_cli(base, [adapter], out) == 0
    assert "verified existing" in capsys.readouterr().out
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == stamps


def test_rerun_with_a_changed_adapter_is_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    adapter = shutil.copytree(tiny_adapter(base, target_modules=["q_proj"]), tmp_path / "a")
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    with (adapter / "adapter_model.safetensors").open("r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x00\x80\x3f")
    assert merge_cli(base, [adapter], out) == 2
    assert "different merge" in capsys.readouterr().err


def test_rerun_with_other_options_is_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    assert merge_cli(base, [adapter], out, "--weights", "0.5") == 2
    assert "different combine" in capsys.readouterr().err


def test_rerun_on_incomplete_artifact_is_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    (out / "tokenizer.json").unlink()
    assert merge_cli(base, [adapter], out) == 2
    assert "tokenizer.json is missing" in capsys.readouterr().err


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        # a file left open on it (a bug) would make this fail: check it, then unmount anyway
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        assert unmounted.returncode == 0, unmounted.stderr


def test_full_disk_fails_and_removes_temporary_files(small_tmpfs, tiny_base, tiny_adapter, capsys):
    base = tiny_base("llama")  # ~500 KB of weights: does not fit 256 KB
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = small_tmpfs / "out"
    assert merge_cli(base, [adapter], out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(small_tmpfs) in err
    assert list(small_tmpfs.iterdir()) == []
