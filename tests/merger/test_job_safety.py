"""The Job on a shared volume: only recorded outputs are skipped, foreign artifacts are never
adopted, and the loser of a publishing race reports the winner's matching artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.merger.engine.provenance import read_provenance, write_provenance
from lorafuse.merger.files.digest import artifact_digest
from lorafuse.merger.pipeline import job
from lorafuse.merger.pipeline.plan import MergePlan
from tests.merger.helpers import tree_digest


def write_plan(path: Path, models, volume: Path) -> MergePlan:
    plan = MergePlan.model_validate(dict(
        base=str(models.base), adapters=[{"name": "support", "source": str(models.adapter)}],
        validation={"max_new_tokens": 8}, artifact_root=str(volume / "artifacts")))
    path.write_text(plan.model_dump_json())
    return plan


def job_step(name: str, plan_file: Path, result_file: Path, *extra) -> int:
    return main(["job", name, "--plan", str(plan_file), "--result-file", str(result_file),
                 *map(str, extra)])


@pytest.fixture
def validated(pipeline_models, tmp_path):
    """A plan whose fetch, merge and validate steps have run; publish has not."""
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, tmp_path / "models")
    for name in ("fetch", "merge", "validate"):
        assert job_step(name, plan_file, result_file) == 0
    return plan, plan_file, result_file


def work_of(plan: MergePlan) -> job.Workdir:
    return job.Workdir(job.default_workdir(plan))


def plant_artifact(plan: MergePlan, provenance_changes: dict) -> Path:
    """Someone else's directory at this plan's artifact path (a copy of the merge)."""
    target = Path(plan.artifact_path())
    shutil.copytree(work_of(plan).merged, target)
    provenance = read_provenance(target)
    provenance.update(provenance_changes)
    write_provenance(target, provenance)
    return target


@pytest.mark.parametrize("provenance, conflict", [
    ({"plan": {"content_hash": "0" * 64}, "validation": {"passed": True}}, "names plan"),
    ({"plan": None, "validation": None}, "names plan"),
    ("this plan, failed validation", "no passed validation"),
])
def test_a_foreign_artifact_is_not_adopted(provenance, conflict, validated, capsys):
    plan, plan_file, result_file = validated
    if isinstance(provenance, str):
        provenance = {"plan": {"content_hash": plan.content_hash()},
                      "validation": {"passed": False}}
    target = plant_artifact(plan, provenance)
    before = tree_digest(target)
    capsys.readouterr()
    assert job_step("publish", plan_file, result_file) == 2
    err = capsys.readouterr().err
    assert "refusing to adopt" in err and conflict in err and str(target) in err
    assert tree_digest(target) == before


def test_the_loser_of_a_publishing_race_reports_the_winners_artifact(validated, monkeypatch):
    plan, plan_file, result_file = validated
    link_tree = job._link_tree

    def winner_publishes_first(source, staging):
        # a second Job of the same plan, on its own work dir, renames first
        rival = job.claim_workdir(plan, work_of(plan).root.parent / "rival")
        shutil.copytree(work_of(plan).root, rival.root, dirs_exist_ok=True)
        monkeypatch.setattr(job, "_link_tree", link_tree)
        job.publish(plan, rival)
        link_tree(source, staging)

    monkeypatch.setattr(job, "_link_tree", winner_publishes_first)
    assert job_step("publish", plan_file, result_file) == 0
    result = json.loads(result_file.read_text())
    target = Path(plan.artifact_path())
    assert result["ok"] is True
    assert result["artifact"]["digest"] == artifact_digest(target)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_a_merge_without_its_completion_record_is_redone(validated):
    plan, plan_file, result_file = validated
    work = work_of(plan)
    shard = work.merged / "model.safetensors"
    size = shard.stat().st_size
    (work.root / "merge.done.json").unlink()
    shard.write_bytes(b"")  # what a node crash can leave behind a rename that survived
    assert job_step("merge", plan_file, result_file) == 0
    assert shard.stat().st_size == size


def test_a_completion_record_of_another_plan_is_not_trusted(validated):
    plan, plan_file, result_file = validated
    work = work_of(plan)
    record = work.root / "merge.done.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "content_hash": "0" * 64}))
    (work.merged / "model.safetensors").write_bytes(b"")
    assert job_step("merge", plan_file, result_file) == 0
    assert (work.merged / "model.safetensors").stat().st_size > 0


def test_a_validation_report_of_another_plan_is_not_published(validated, capsys):
    plan, plan_file, result_file = validated
    report_file = work_of(plan).validation
    report_file.write_text(json.dumps({**json.loads(report_file.read_text()),
                                       "content_hash": "0" * 64}))
    assert job_step("publish", plan_file, result_file) == 2
    assert "validate step has not run" in capsys.readouterr().err
    assert not Path(plan.artifact_path()).exists()


def test_publish_verifies_the_digest_it_reports(validated, monkeypatch):
    plan, plan_file, result_file = validated
    checked = []
    verify = job.verify_artifact
    monkeypatch.setattr(job, "verify_artifact",
                        lambda path, digest: checked.append((path, digest)) or verify(path, digest))
    assert job_step("publish", plan_file, result_file) == 0
    result = json.loads(result_file.read_text())
    assert checked == [(Path(plan.artifact_path()), result["artifact"]["digest"])]
