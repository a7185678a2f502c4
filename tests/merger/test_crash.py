"""Crashes as a container sees them: the merge is PID 1 and is killed without warning."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.merger.helpers import as_pid_one, lorafuse_command, namespace_init

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(as_pid_one(["true"]), capture_output=True, check=False).returncode != 0,
    reason="needs unshare --pid (root or user namespaces)")


def merge_as_pid_one(base: Path, adapter: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        as_pid_one(lorafuse_command("merge", "--base", base, "--adapter", adapter, "--out", out,
                                    "--shard-size", "1MB")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_shards(parent: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(parent.glob(".*lorafuse-staging-*/*.safetensors")):
            return
        time.sleep(0.005)
    raise AssertionError("the merge wrote no shard before it could be killed")


def test_rerun_as_pid_one_cleans_up_after_a_killed_pid_one(medium_model, tmp_path):
    base, adapter = medium_model
    parent = tmp_path / "artifacts"
    parent.mkdir()
    out = parent / "merged"
    first = merge_as_pid_one(base, adapter, out)
    wait_for_shards(parent, first)
    os.kill(namespace_init(first.pid), signal.SIGKILL)  # PID 1 of its namespace
    first.wait(timeout=60)
    assert not out.exists()
    assert list(parent.iterdir()), "the killed run should have left its staging dir"

    second = merge_as_pid_one(base, adapter, out)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert [p.name for p in parent.iterdir()] == ["merged"]
    assert (out / "lorafuse.json").is_file()
