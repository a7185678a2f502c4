"""The checkout as a new user meets it: a plain venv run from the root, and the built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "lorafuse"  # merger/, serving/ and operator/ are linked in here


def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> Path:
    """A fresh `python -m venv`, with pip, as a new user makes it; returns its python."""
    root = tmp_path_factory.mktemp("venv") / "plain"
    venv.EnvBuilder(with_pip=True).create(root)
    return root / "bin" / "python"


def test_a_plain_venv_started_from_the_root_imports_the_standard_library(plain_venv):
    result = run(plain_venv, "-c", "import collections, operator; operator.eq")
    assert result.returncode == 0, result.stderr


def test_pip_runs_from_the_root_in_a_plain_venv(plain_venv):
    result = run(plain_venv, "-m", "pip", "--version")
    assert result.returncode == 0, result.stderr


def test_pytest_runs_from_the_root():
    # sys.executable is the venv the suite runs in: in CI, a plain venv made by .ci/run.
    result = run(sys.executable, "-m", "pytest", "--version")
    assert result.returncode == 0, result.stderr


def test_no_folder_at_the_root_shadows_a_standard_library_module():
    stdlib = set(sys.stdlib_module_names)
    shadowing = [
        path.name for path in REPO.iterdir()
        if path.is_dir() and path.name in stdlib and (path / "__init__.py").exists()
    ]
    assert shadowing == []


def checkout_copy(target: Path) -> Path:
    """The files git would commit (tracked and untracked, not ignored), links kept as links:
    setuptools reuses a checkout's ignored build/ folder, which can hold deleted modules."""
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source, copy = REPO / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in git
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    tree = checkout_copy(tmp_path_factory.mktemp("checkout"))
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, tree)
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("lorafuse-*.whl")
    return built


def source_modules() -> set[str]:
    """Every .py file of the package folders, as its path inside the wheel."""
    files = set()
    # followlinks: merger/, serving/ and operator/ are links (Path.rglob would not enter them)
    for folder, _dirs, names in os.walk(PACKAGE, followlinks=True):
        for name in names:
            if name.endswith(".py") and "__pycache__" not in folder:
                files.add("lorafuse/" + (Path(folder) / name).relative_to(PACKAGE).as_posix())
    return files


def test_the_wheel_holds_every_python_file_of_the_package_folders(wheel):
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.endswith(".py")}
    expected = source_modules()
    assert {"lorafuse/operator/spec.py", "lorafuse/merger/engine/merge.py",
            "lorafuse/serving/tuning.py"} <= expected
    assert expected - in_wheel == set()


IMPORT_ALL = """
import importlib, pathlib, sys
import lorafuse
root = pathlib.Path(lorafuse.__file__).parent
assert str(root).startswith(sys.prefix), f"lorafuse imported from {root}, not the wheel"
names = sorted(
    "lorafuse." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    for p in root.rglob("*.py")
    if p.name != "__main__.py"  # runs the command line when imported
)
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_of_the_installed_wheel_imports(wheel, tmp_path):
    target = tmp_path / "installed"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    result = run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel)
    assert result.returncode == 0, result.stderr
    # The dependencies come from the suite's own environment, after the wheel's site-packages;
    # a plain path entry does not run that environment's .pth files (its editable install).
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site.stdout.strip(), "suite-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    result = run(python, "-c", IMPORT_ALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == len(source_modules()) - 1  # all but __main__
