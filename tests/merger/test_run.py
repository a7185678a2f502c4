"""`lorafuse run`: the example ModelDeployment on this machine, offline, with and without vLLM."""

import json
import re
import shutil
import socket
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.merger.pipeline.manifest import plan_from_spec

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def models_root(pipeline_models, tmp_path):
    """A directory laid out like the model volume: demo/ (as `lorafuse demo` writes it)
    and examples/."""
    root = tmp_path / "models"
    shutil.copytree(pipeline_models.base, root / "demo" / "base")
    shutil.copytree(pipeline_models.adapter, root / "demo" / "adapter")
    shutil.copytree(EXAMPLES, root / "examples")
    return root


def run_example(root: Path, name: str, *extra) -> int:
    return main(["run", str(root / "examples" / name), "--models-root", str(root),
                 *map(str, extra)])


def test_example_publishes_offline_and_says_when_vllm_is_missing(models_root, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("LORAFUSE_VLLM_PYTHON", str(models_root / "no-vllm" / "python"))
    rc = run_example(models_root, "demo-modeldeployment.yaml")
    out = capsys.readouterr().out
    artifact = Path(re.search(r"^artifact: (.+)$", out, re.MULTILINE)[1])
    assert rc == 0
    assert artifact.parent == models_root / "artifacts"
    assert json.loads((artifact / "lorafuse.json").read_text())["validation"]["passed"]
    assert "task score 1.000 (reference 1.000)" in out  # the example's texts are the demo's
    assert "vLLM not found" in out


def test_fp8_example_publishes_a_quantized_artifact(models_root, capsys):
    pytest.importorskip("llmcompressor")
    rc = run_example(models_root, "demo-fp8-modeldeployment.yaml", "--no-serve")
    out = capsys.readouterr().out
    artifact = Path(re.search(r"^artifact: (.+)$", out, re.MULTILINE)[1])
    config = json.loads((artifact / "config.json").read_text())
    assert rc == 0
    assert "[quantize] quantized with fp8" in out
    assert config["quantization_config"]["format"] == "float-quantized"


@pytest.mark.vllm
def test_example_is_served_by_vllm_then_stopped(models_root, capsys):
    from lorafuse.serving.local import find_vllm_python

    if find_vllm_python() is None:
        pytest.skip("vLLM CPU venv absent: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON")
    rc = run_example(models_root, "demo-modeldeployment.yaml")
    out = capsys.readouterr().out
    port = int(re.search(r"^endpoint: http://127\.0\.0\.1:(\d+)/v1", out, re.MULTILINE)[1])
    completion = re.search(r"^completion for 'Where is my order\?': '(.*)'$", out, re.MULTILINE)
    assert rc == 0
    assert "--max-model-len 256 --max-num-seqs 4 --enforce-eager" in out
    assert completion and completion[1]
    assert out.rstrip().endswith("vLLM stopped")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def write_manifest(root: Path, text: str) -> Path:
    path = root / "manifest.yaml"
    path.write_text(text)
    return path


def test_a_configmap_input_needs_a_cluster(models_root, capsys):
    manifest = (models_root / "examples" / "demo-modeldeployment.yaml").read_text()
    manifest = manifest.replace("path: /models/examples/demo-eval.jsonl",
                                "configMap: {name: evals, key: demo.jsonl}")
    rc = main(["run", str(write_manifest(models_root, manifest)), "--models-root",
               str(models_root), "--no-serve"])
    assert rc == 2
    assert "ConfigMap, which needs a cluster" in capsys.readouterr().err


def test_a_file_without_a_modeldeployment_is_bad_input(tmp_path, capsys):
    rc = main(["run", str(write_manifest(tmp_path, "apiVersion: v1\nkind: ConfigMap\n"))])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"lorafuse run: error: {tmp_path / 'manifest.yaml'}: no ModelDeployment in " \
                  "this file"


def test_spec_fields_become_the_plan():
    spec = {
        "base": {"source": "hf://acme/llama", "revision": "abc123"},
        "adapters": [{"name": "support", "source": "pvc://adapters/support", "weight": 0.5}],
        "combine": {"method": "ties", "density": 0.4, "seed": 3},
        "dtype": "bfloat16",
        "quantization": {"method": "gptq", "calibration": {"configMap": {"name": "c",
                                                                         "key": "cal.jsonl"}},
                         "samples": 16, "seqLen": 256},
        "validation": {"eval": {"path": "/models/eval.jsonl"}, "maxDelta": 0.05,
                       "maxNewTokens": 20, "minTokenAgreement": 0.7},
        "serving": {"mode": "merged"},
    }
    plan = plan_from_spec(spec)
    assert plan.base == "hf://acme/llama@abc123"
    assert (plan.combine, plan.density, plan.seed, plan.dtype) == ("ties", 0.4, 3, "bfloat16")
    assert plan.adapters[0].weight == 0.5
    assert plan.quantization.calibration == "/inputs/calibration/cal.jsonl"
    assert (plan.quantization.samples, plan.quantization.seq_len) == (16, 256)
    assert plan.validation.eval == "/models/eval.jsonl"
    assert (plan.validation.max_delta, plan.validation.min_token_agreement) == (0.05, 0.7)
    assert plan.artifact_root == "/models/artifacts"
