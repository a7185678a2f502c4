"""The slim operator image has no torch: its commands must neither import nor need it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from lorafuse.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
SLIM_COMMANDS = ["operator", "render", "crd", "job", "prune"]
# Runs first in the child interpreter: any attempt to import torch raises at once.
BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} imported on a path the operator image runs")

    sys.meta_path.insert(0, NoTorch())
    """
)


def run_without_torch(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def command_module(name: str) -> str:
    if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
        pytest.skip(f"`lorafuse {name}` is not part of this tree")
    return COMMANDS[name][0]


@pytest.mark.parametrize("name", SLIM_COMMANDS)
def test_command_module_imports_without_torch(name):
    module = command_module(name)
    result = run_without_torch(
        f"""
        import importlib
        importlib.import_module({module!r})
        assert "torch" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr


def test_crd_command_runs_without_torch():
    command_module("crd")
    result = run_without_torch(
        """
        from lorafuse.cli import main
        sys.exit(main(["crd"]))
        """
    )
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert "CustomResourceDefinition" in kinds


EXAMPLES = [
    p
    for p in sorted((REPO / "manifests" / "examples").glob("*.yaml"))
    if "kind: ModelDeployment" in p.read_text()
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_command_runs_without_torch(example):
    command_module("render")
    result = run_without_torch(
        f"""
        from lorafuse.cli import main
        sys.exit(main(["render", {str(example)!r}]))
        """
    )
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert "Deployment" in kinds


def test_job_verify_runs_without_torch(tmp_path):
    command_module("job")
    from lorafuse.merger.files.digest import artifact_digest

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "config.json").write_text('{"model_type": "llama"}')
    (artifact / "model.safetensors").write_bytes(b"\0" * 64)
    digest = artifact_digest(artifact)
    result = run_without_torch(
        f"""
        from lorafuse.cli import main
        sys.exit(main(["job", "verify", "--artifact", {str(artifact)!r}, "--digest", {digest!r}]))
        """
    )
    assert result.returncode == 0, result.stderr


def requirement_closure(extra: str) -> set[str]:
    """Names of the distributions `pip install lorafuse[extra]` brings, from installed metadata."""
    seen: set[str] = set()
    todo = [
        Requirement(r)
        for r in metadata.requires("lorafuse") or []
        if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": extra})
    ]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or name == "lorafuse":
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [
            r
            for r in map(Requirement, requires)
            if r.marker is None or r.marker.evaluate({"extra": ""})
        ]
    return seen


def test_operator_extra_does_not_pull_torch():
    closure = requirement_closure("operator")
    assert {"kopf", "kubernetes", "pydantic"} <= closure
    assert not closure & {"torch", "transformers", "peft", "llmcompressor"}
