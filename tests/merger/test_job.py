"""`lorafuse job`: the merge Job's steps on a shared volume, idempotent, atomic, one result."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.merger.files.digest import artifact_digest
from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.merger.pipeline.result import JobResult
from tests.merger.helpers import tree_state

STEPS = ("fetch", "merge", "validate", "publish")


@pytest.fixture
def volume(tmp_path):
    """A stand-in for the model volume: artifacts/ and work/ under one directory."""
    return tmp_path / "models"


def write_plan(path: Path, models, volume: Path, **overrides) -> MergePlan:
    fields = dict(
        base=str(models.base),
        adapters=[{"name": "support", "source": str(models.adapter)}],
        validation={"max_new_tokens": 8},
        artifact_root=str(volume / "artifacts"),
    )
    fields.update(overrides)
    plan = MergePlan.model_validate(fields)
    path.write_text(plan.model_dump_json())
    return plan


def step(name: str, plan_file: Path, result_file: Path, *extra) -> int:
    return main(["job", name, "--plan", str(plan_file), "--result-file", str(result_file),
                 *map(str, extra)])


def run_all(plan_file: Path, result_file: Path, steps=STEPS) -> list[int]:
    return [step(name, plan_file, result_file) for name in steps]


@pytest.fixture
def published(pipeline_models, eval_file, volume, tmp_path):
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, volume,
                      validation={"eval": str(eval_file), "max_new_tokens": 8})
    codes = run_all(plan_file, result_file)
    return plan, plan_file, result_file, codes


def test_steps_publish_the_artifact_and_report_it(published, pipeline_models):
    plan, _plan_file, result_file, codes = published
    result = json.loads(result_file.read_text())
    artifact = Path(plan.artifact_path())
    adapter_file = pipeline_models.adapter / "adapter_model.safetensors"
    assert codes == [0, 0, 0, 0]
    assert result["ok"] is True and result["step"] == "publish"
    assert result["artifact"]["path"] == str(artifact)
    assert result["artifact"]["digest"] == artifact_digest(artifact)
    assert result["artifact"]["bytes"] == sum(p.stat().st_size for p in artifact.iterdir())
    assert result["validation"]["passed"] is True
    assert result["validation"]["score_candidate"] == 1.0
    assert result["provenance"]["adapters"] == [
        {"name": "support", "sha256": hashlib.sha256(adapter_file.read_bytes()).hexdigest()}]
    assert result["model_shape"]["num_layers"] == 2
    assert len(result_file.read_bytes()) < 4096


def test_published_provenance_carries_the_validation(published):
    plan = published[0]
    provenance = json.loads((Path(plan.artifact_path()) / "lorafuse.json").read_text())
    assert provenance["validation"]["passed"] is True
    assert provenance["plan"]["content_hash"] == plan.content_hash()


def test_repeated_steps_change_nothing(published, volume):
    _plan, plan_file, result_file, _codes = published
    first_result = result_file.read_text()
    before = tree_state(volume)
    codes = run_all(plan_file, result_file)
    assert codes == [0, 0, 0, 0]
    assert tree_state(volume) == before
    assert json.loads(result_file.read_text()) == json.loads(first_result)


def test_failed_validation_publishes_nothing_and_says_why(
    pipeline_models, eval_file, volume, tmp_path
):
    import shutil

    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, volume,
                      validation={"eval": str(eval_file), "max_new_tokens": 8})
    assert run_all(plan_file, result_file, ("fetch", "merge")) == [0, 0]
    # A merge gone wrong: the merged weights replaced by a damaged copy.
    merged = next((volume / "work").iterdir()) / "merged"
    shutil.copy2(pipeline_models.damaged / "model.safetensors", merged / "model.safetensors")
    validate_code = step("validate", plan_file, result_file)
    result = json.loads(result_file.read_text())
    publish_code = step("publish", plan_file, result_file)
    assert validate_code == publish_code == 3
    assert result["ok"] is False and result["reason"] == "ValidationFailed"
    assert result["step"] == "validate" and "task score fell" in result["message"]
    assert result["validation"]["passed"] is False
    assert not Path(plan.artifact_path()).exists()
    assert not (volume / "artifacts").exists()


def test_quantized_plan_publishes_the_quantized_model(pipeline_models, volume, tmp_path):
    pytest.importorskip("llmcompressor")
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, volume, quantization={"method": "fp8"})
    codes = run_all(plan_file, result_file, ("fetch", "merge", "quantize", "validate", "publish"))
    result = json.loads(result_file.read_text())
    config = json.loads((Path(plan.artifact_path()) / "config.json").read_text())
    assert codes == [0] * 5
    assert result["artifact"]["quantization"] == "fp8"
    assert config["quantization_config"]["format"] == "float-quantized"
    assert result["model_shape"]["quantization"] == "compressed-tensors"


def test_a_crash_while_publishing_leaves_nothing_published(
    pipeline_models, volume, tmp_path, monkeypatch
):
    from lorafuse.merger.pipeline import job

    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, volume)
    assert run_all(plan_file, result_file, ("fetch", "merge", "validate")) == [0, 0, 0]

    def disk_full(_directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job, "scan_artifact", disk_full)
    with pytest.raises(OSError):
        step("publish", plan_file, result_file)
    crashed = json.loads(result_file.read_text())
    assert crashed["ok"] is False and crashed["step"] == "publish"
    assert list((volume / "artifacts").iterdir()) == []  # no artifact, no staging leftovers
    monkeypatch.undo()
    assert step("publish", plan_file, result_file) == 0
    assert Path(plan.artifact_path()).is_dir()


def test_a_killed_merge_leaves_no_merge_behind_and_the_step_resumes(
    pipeline_models, volume, tmp_path
):
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, volume)
    assert step("fetch", plan_file, result_file) == 0
    work = next((volume / "work").iterdir())
    # Killed while writing: the engine's staging directory exists, the merge does not.
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_MERGE, str(plan_file), str(result_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    assert not (work / "merged").exists()
    assert list(work.glob(".merged.lorafuse-staging-*"))
    assert step("merge", plan_file, result_file) == 0
    assert (work / "merged" / "lorafuse.json").is_file()
    assert not list(work.glob(".merged.lorafuse-staging-*"))


# Runs the merge step and SIGKILLs itself once the first output shard is being written.
KILL_DURING_MERGE = """
import os, signal, sys
from lorafuse.merger.files import writer
original = writer.ShardWriter.__init__
def die(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
writer.ShardWriter.__init__ = die
from lorafuse.cli import main
main(["job", "merge", "--plan", sys.argv[1], "--result-file", sys.argv[2]])
"""


def test_a_work_directory_of_another_plan_is_refused(pipeline_models, volume, tmp_path, capsys):
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, volume)
    workdir = tmp_path / "shared-work"
    assert step("fetch", plan_file, result_file, "--workdir", workdir) == 0
    write_plan(plan_file, pipeline_models, volume, seed=7)
    assert step("fetch", plan_file, result_file, "--workdir", workdir) == 2
    assert "holds the work of another plan" in capsys.readouterr().err


def test_missing_source_fails_fetch_with_one_line(pipeline_models, volume, tmp_path, capsys):
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, volume, base=str(tmp_path / "nowhere"))
    assert step("fetch", plan_file, result_file) == 2
    result = json.loads(result_file.read_text())
    assert result["reason"] == "InvalidInput"
    assert "no such directory" in result["message"]
    assert not list((volume / "work").glob("*/sources.json"))


def test_malformed_eval_file_fails_the_first_step(pipeline_models, volume, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"prompt": "a", "expected": "b"}\n{"prompt": "c"}\n')
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, volume, validation={"eval": str(eval_file)})
    assert step("fetch", plan_file, result_file) == 2
    assert f"{eval_file}:2: missing 'expected'" in json.loads(result_file.read_text())["message"]


def test_steps_out_of_order_say_which_step_is_missing(pipeline_models, volume, tmp_path):
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, volume)
    assert step("publish", plan_file, result_file) == 2
    assert "the validate step has not run" in json.loads(result_file.read_text())["message"]


def verify_in_subprocess(artifact: Path, digest: str, result_file: Path):
    """`lorafuse job verify` in a fresh interpreter that reports whether torch got imported."""
    code = ("import sys; from lorafuse.cli import main; rc = main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    return subprocess.run(
        [sys.executable, "-c", code, "job", "verify", "--artifact", str(artifact),
         "--digest", digest, "--result-file", str(result_file)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_verify_accepts_the_artifact_without_importing_torch(published, tmp_path):
    plan, _plan_file, result_file, _codes = published
    digest = json.loads(result_file.read_text())["artifact"]["digest"]
    verified = verify_in_subprocess(Path(plan.artifact_path()), digest, tmp_path / "verify.json")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith("NO-TORCH")
    assert json.loads((tmp_path / "verify.json").read_text())["ok"] is True


def test_verify_rejects_a_changed_artifact(published, tmp_path):
    import shutil

    plan, _plan_file, result_file, _codes = published
    digest = json.loads(result_file.read_text())["artifact"]["digest"]
    copy = tmp_path / "tampered"
    shutil.copytree(plan.artifact_path(), copy)
    with (copy / "config.json").open("a") as handle:
        handle.write(" ")
    verified = verify_in_subprocess(copy, digest, tmp_path / "verify.json")
    result = json.loads((tmp_path / "verify.json").read_text())
    assert verified.returncode == 2
    assert result["ok"] is False and "digest mismatch" in result["message"]


def test_result_with_many_adapters_fits_a_termination_message():
    adapters = [{"name": f"adapter-{i:02d}-with-a-long-name", "sha256": "a" * 64}
                for i in range(64)]
    result = {"ok": True, "step": "publish", "reason": None, "message": "x" * 3000,
              "artifact": {"name": "n", "path": "/p", "digest": "sha256:" + "b" * 64,
                           "bytes": 1, "quantization": "none"},
              "validation": None, "provenance": {"base": "/b", "base_revision": None,
                                                 "adapters": adapters},
              "model_shape": {"num_layers": 2}}
    fitted = JobResult.model_validate(result).fitted().model_dump(mode="json")
    assert len(json.dumps(fitted, separators=(",", ":")).encode()) <= 4096
    assert fitted["provenance"]["adapters"][0]["name"] == "adapter-00-with-a-long-name"
    assert fitted["provenance"]["adapters_omitted"] > 0
