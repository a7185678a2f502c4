"""`lorafuse job` with a gguf-* quantization: model.gguf published with digest and provenance."""

import json
import sys
from pathlib import Path

import pytest

from lorafuse.merger.engine.provenance import sha256_file
from lorafuse.merger.files.digest import artifact_digest
from tests.merger.test_job import run_all, step, verify_in_subprocess, write_plan

pytest.importorskip("gguf")

ALL_STEPS = ("fetch", "merge", "quantize", "validate", "publish")


@pytest.fixture(scope="module")
def gguf_published(pipeline_models, tmp_path_factory):
    """A gguf-q8_0 plan of the tiny model run through every step: (plan, result, codes)."""
    root = tmp_path_factory.mktemp("gguf-job")
    plan_file, result_file = root / "plan.json", root / "result.json"
    plan = write_plan(plan_file, pipeline_models, root / "models",
                      quantization={"method": "gguf-q8_0"})
    codes = run_all(plan_file, result_file, ALL_STEPS)
    return plan, json.loads(result_file.read_text()), codes


def test_gguf_plan_publishes_model_gguf_modelfile_and_provenance(gguf_published):
    plan, _result, codes = gguf_published
    artifact = Path(plan.artifact_path())
    assert codes == [0] * 5
    assert sorted(p.name for p in artifact.iterdir()) == ["Modelfile", "lorafuse.json",
                                                          "model.gguf"]
    assert artifact.name.endswith("--gguf-q8_0--" + plan.content_hash()[:12])


def test_gguf_result_reports_the_artifacts_digest(gguf_published):
    plan, result, _codes = gguf_published
    assert result["ok"] is True and result["step"] == "publish"
    assert result["artifact"]["quantization"] == "gguf-q8_0"
    assert result["artifact"]["digest"] == artifact_digest(Path(plan.artifact_path()))


def test_gguf_provenance_records_export_validation_and_plan(gguf_published):
    plan, _result, _codes = gguf_published
    artifact = Path(plan.artifact_path())
    provenance = json.loads((artifact / "lorafuse.json").read_text())
    assert provenance["quantization"]["method"] == "gguf-q8_0"
    assert provenance["quantization"]["file_sha256"] == sha256_file(artifact / "model.gguf")
    assert provenance["validation"]["passed"] is True
    assert provenance["plan"]["content_hash"] == plan.content_hash()
    assert [a["name"] for a in provenance["adapters"]] == ["support"]


def test_gguf_candidate_is_validated_from_the_gguf_file(gguf_published):
    _plan, result, _codes = gguf_published
    # read back through transformers' gguf_file=: Q8_0's rounding shows, and stays small
    assert result["validation"]["token_agreement"] >= 0.9
    assert 0 < result["validation"]["mean_kl"] < 0.25


def test_gguf_result_has_no_model_shape_for_vllm(gguf_published):
    assert gguf_published[1]["model_shape"] is None


def test_serving_pods_verify_accepts_a_gguf_artifact(gguf_published, tmp_path):
    plan, result, _codes = gguf_published
    verified = verify_in_subprocess(Path(plan.artifact_path()), result["artifact"]["digest"],
                                    tmp_path / "verify.json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads((tmp_path / "verify.json").read_text())["ok"] is True


def test_k_quant_plan_without_llama_cpp_fails_fetch_saying_what_to_install(
    pipeline_models, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    monkeypatch.delenv("LORAFUSE_LLAMA_CPP_PYTHON", raising=False)
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    write_plan(plan_file, pipeline_models, tmp_path / "models",
               quantization={"method": "gguf-q4_k_m"})
    assert step("fetch", plan_file, result_file) == 2
    result = json.loads(result_file.read_text())
    assert result["reason"] == "InvalidInput"
    assert "lorafuse[gguf-kquants]" in result["message"]
    assert not list((tmp_path / "models" / "work").glob("*/sources.json"))


def test_k_quant_plan_with_llama_cpp_publishes_a_q4_k_m_gguf(pipeline_models, tmp_path):
    from lorafuse.merger.gguf.kquants import llama_cpp_python

    if llama_cpp_python() is None:
        pytest.skip("llama-cpp-python not found: scripts/llama-cpp-venv.sh, then set "
                    "LORAFUSE_LLAMA_CPP_PYTHON to its bin/python")
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan = write_plan(plan_file, pipeline_models, tmp_path / "models",
                      quantization={"method": "gguf-q4_k_m"})
    codes = run_all(plan_file, result_file, ALL_STEPS)
    provenance = json.loads((Path(plan.artifact_path()) / "lorafuse.json").read_text())
    assert codes == [0] * 5
    assert provenance["quantization"]["scheme"] == "MOSTLY_Q4_K_M"
    assert "llama-cpp-python" in provenance["quantization"]["tool"]
