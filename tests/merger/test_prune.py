"""`lorafuse prune` on real folders: what goes, what stays, the bytes freed, and refusals."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.errors import UserError
from lorafuse.merger.files.atomic import staging_dir
from lorafuse.merger.files.prune import hold_in_use


def _hash(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


PLAN_A, PLAN_B = _hash("a"), _hash("b")
NAME_A = f"tiny--support--{PLAN_A[:12]}"
NAME_B = f"tiny--support--{PLAN_B[:12]}"


def _publish(root: Path, name: str, plan: str, size: int = 1000) -> None:
    """An artifact as the Job leaves it: work/NAME/merged, hard-linked into artifacts/NAME."""
    work = root / "work" / name
    (work / "merged").mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"content_hash": plan}))
    (work / "merged" / "model.safetensors").write_bytes(b"w" * size)
    artifact = root / "artifacts" / name
    artifact.mkdir(parents=True)
    os.link(work / "merged" / "model.safetensors", artifact / "model.safetensors")
    (artifact / "lorafuse.json").write_text(json.dumps({"plan": {"content_hash": plan}}))


@pytest.fixture
def volume(tmp_path) -> Path:
    root = tmp_path / "models"
    _publish(root, NAME_A, PLAN_A)
    _publish(root, NAME_B, PLAN_B)
    return root


def _prune(root: Path, *targets: str, result: Path | None = None) -> int:
    argv = ["prune", "--root", str(root)]
    for target in targets:
        argv += ["--artifact", target]
    if result is not None:
        argv += ["--result-file", str(result)]
    return main(argv)


def _result(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(capsys, root: Path, *targets: str, expect: str) -> None:
    """Exit 2, one error line naming the problem, and not one file removed."""
    before = _files(root)
    capsys.readouterr()
    assert _prune(root, *targets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lorafuse prune: error: "), err
    assert expect in err[0], err[0]
    assert _files(root) == before


def test_prune_removes_the_artifact_and_its_work_directory(volume, capsys):
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert not (volume / "artifacts" / NAME_A).exists()
    assert not (volume / "work" / NAME_A).exists()
    assert _result(capsys)["pruned"] == [NAME_A]


def test_a_plan_hash_prefix_as_status_keeps_it_is_enough(volume, capsys):
    assert _prune(volume, f"{NAME_A}={PLAN_A[:16]}") == 0
    assert _result(capsys)["pruned"] == [NAME_A]


def test_other_artifacts_stay(volume):
    before = _files(volume / "artifacts" / NAME_B) + _files(volume / "work" / NAME_B)
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert _files(volume / "artifacts" / NAME_B) + _files(volume / "work" / NAME_B) == before


def test_bytes_reclaimed_count_a_hard_linked_file_once(volume, capsys):
    records = len((volume / "work" / NAME_A / "plan.json").read_bytes()) + len(
        (volume / "artifacts" / NAME_A / "lorafuse.json").read_bytes()
    )
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert _result(capsys)["reclaimed_bytes"] == 1000 + records


def test_a_file_also_linked_outside_frees_nothing(volume, capsys, tmp_path):
    weights = volume / "artifacts" / NAME_A / "model.safetensors"
    os.link(weights, tmp_path / "kept-elsewhere")
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert _result(capsys)["reclaimed_bytes"] < 1000
    assert (tmp_path / "kept-elsewhere").stat().st_size == 1000


def test_an_absent_artifact_counts_as_pruned_with_no_bytes(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    assert _prune(tmp_path / "models", f"{NAME_A}={PLAN_A}") == 0
    result = _result(capsys)
    assert (result["pruned"], result["reclaimed_bytes"]) == ([NAME_A], 0)


def test_the_result_is_written_to_the_result_file(volume, tmp_path, capsys):
    result_file = tmp_path / "termination-log"
    assert _prune(volume, f"{NAME_A}={PLAN_A}", result=result_file) == 0
    assert json.loads(result_file.read_text()) == _result(capsys)


def test_an_artifact_linking_out_of_the_volume_is_refused(volume, tmp_path, capsys):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "lorafuse.json").write_text(json.dumps({"plan": {"content_hash": PLAN_A}}))
    os.symlink(outside, volume / "artifacts" / f"x--{PLAN_A[:12]}")
    _refused(capsys, volume, f"x--{PLAN_A[:12]}={PLAN_A}", expect="refusing")
    assert (outside / "lorafuse.json").is_file()


def test_an_artifacts_folder_linking_out_of_the_volume_is_refused(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    _publish(elsewhere, NAME_A, PLAN_A)
    (tmp_path / "models").mkdir()
    os.symlink(elsewhere / "artifacts", tmp_path / "models" / "artifacts")
    _refused(capsys, tmp_path / "models", f"{NAME_A}={PLAN_A}", expect="refusing")
    assert (elsewhere / "artifacts" / NAME_A / "model.safetensors").is_file()


def test_a_provenance_link_out_of_the_artifact_is_refused(volume, tmp_path, capsys):
    record = volume / "artifacts" / NAME_A / "lorafuse.json"
    (tmp_path / "forged.json").write_text(record.read_text())
    record.unlink()
    os.symlink(tmp_path / "forged.json", record)
    _refused(capsys, volume, f"{NAME_A}={PLAN_A}", expect="links outside")


def test_an_artifact_of_another_plan_is_refused_and_nothing_is_removed(volume, capsys):
    foreign = volume / "artifacts" / NAME_B / "lorafuse.json"
    foreign.write_text(json.dumps({"plan": {"content_hash": _hash("someone else")}}))
    _refused(capsys, volume, f"{NAME_A}={PLAN_A}", f"{NAME_B}={PLAN_B}", expect="not this artifact")


def test_a_work_directory_of_another_plan_is_refused(volume, capsys):
    (volume / "work" / NAME_A / "plan.json").write_text(json.dumps({"content_hash": PLAN_B}))
    _refused(capsys, volume, f"{NAME_A}={PLAN_A}", expect="plan.json names plan")


@pytest.mark.parametrize(
    "target",
    [
        f"../models/artifacts/{NAME_A}={PLAN_A}",
        f"artifacts/{NAME_A}={PLAN_A}",
        f"..--{PLAN_A[:12]}={PLAN_A}",
        f"/etc--{PLAN_A[:12]}={PLAN_A}",
        f"{NAME_A}",
        f"{NAME_A}={PLAN_A[:11]}",
        f"{NAME_A}={PLAN_B}",
    ],
)
def test_a_target_that_is_not_one_artifact_name_of_its_plan_is_refused(volume, capsys, target):
    _refused(capsys, volume, f"{NAME_B}={PLAN_B}", target, expect="--artifact")


def test_no_target_is_refused(volume, capsys):
    _refused(capsys, volume, expect="at least one --artifact")


def test_a_missing_volume_root_is_refused(tmp_path, capsys):
    assert _prune(tmp_path / "nowhere", f"{NAME_A}={PLAN_A}") == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_work_directory_a_job_step_holds_is_left_and_reported_busy(volume, capsys):
    held = hold_in_use(volume / "work" / NAME_A)
    assert held is not None
    try:
        assert _prune(volume, f"{NAME_A}={PLAN_A}", f"{NAME_B}={PLAN_B}") == 0
    finally:
        os.close(held)
    result = _result(capsys)
    assert (result["busy"], result["pruned"]) == ([NAME_A], [NAME_B])
    assert (volume / "artifacts" / NAME_A / "model.safetensors").is_file()


def test_an_artifact_being_published_is_left_and_reported_busy(tmp_path, capsys):
    root = tmp_path / "models"
    (root / "artifacts").mkdir(parents=True)
    with staging_dir(root / "artifacts" / NAME_A) as staging:
        (staging / "model.safetensors").write_bytes(b"w")
        assert _prune(root, f"{NAME_A}={PLAN_A}") == 0
        assert staging.is_dir()
    assert _result(capsys)["busy"] == [NAME_A]


def test_staging_left_by_a_crashed_publish_goes_with_its_artifact(volume):
    stale = volume / "artifacts" / f".{NAME_A}.lorafuse-staging-dead"
    stale.mkdir()
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert not stale.exists()


def test_leftovers_of_a_crashed_prune_are_removed_and_counted(volume, capsys):
    leftover = volume / "artifacts" / f".{NAME_B}.lorafuse-pruning-dead"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"w" * 500)
    assert _prune(volume, f"{NAME_A}={PLAN_A}") == 0
    assert not leftover.exists()
    assert _result(capsys)["reclaimed_bytes"] > 1500


def test_a_work_directory_removed_while_a_step_waits_is_claimed_again(volume):
    work = volume / "work" / NAME_A
    pruning = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(pruning, fcntl.LOCK_EX)  # as `lorafuse prune` holds it while removing
    waited: list[int | None] = []
    step = threading.Thread(target=lambda: waited.append(hold_in_use(work)))
    step.start()
    step.join(0.3)
    assert step.is_alive()  # the step waits for the prune
    work.rename(work.with_name(f".{NAME_A}.lorafuse-pruning-x"))
    os.close(pruning)
    step.join(5)
    assert waited == [None]  # gone: the step claims its work directory again


def test_a_missing_work_directory_is_not_held(tmp_path):
    assert hold_in_use(tmp_path / "gone") is None


def test_a_work_directory_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "work").write_text("")
    with pytest.raises(UserError, match="cannot open the work directory"):
        hold_in_use(tmp_path / "work")
