"""`lorafuse run`: the example ModelDeployment on this machine, offline, with and without vLLM."""

import json
import re
import shutil
import socket
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import size_serving
from lorafuse.operator.spec import ModelDeploymentSpec
from lorafuse.runner import LocalPaths, local_vllm_options
from lorafuse.serving.vllm_args import vllm_args

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


@pytest.mark.vllm
def test_a_model_with_layers_kept_unquantized_is_served_by_vllm(models_root, capsys):
    """vLLM reads the ignore list a partly quantized checkpoint carries (its fused layers
    whole), so a layer kept in bf16 next to FP8 ones loads and answers."""
    from lorafuse.serving.local import find_vllm_python

    pytest.importorskip("llmcompressor")
    if find_vllm_python() is None:
        pytest.skip("vLLM CPU venv absent: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON")
    manifest = (models_root / "examples" / "demo-fp8-modeldeployment.yaml").read_text()
    kept = manifest.replace("method: fp8", "method: fp8\n    ignore: ['re:model\\.layers\\.1\\.']")
    (models_root / "examples" / "partly-fp8.yaml").write_text(kept)
    rc = run_example(models_root, "partly-fp8.yaml", "--prompt", "Where is my order?")
    out = capsys.readouterr().out
    artifact = Path(re.search(r"^artifact: (.+)$", out, re.MULTILINE)[1])
    ignored = json.loads((artifact / "config.json").read_text())["quantization_config"]["ignore"]
    completion = re.search(r"^completion for 'Where is my order\?': '(.*)'$", out, re.MULTILINE)
    assert rc == 0, out
    assert "model.layers.1.self_attn.q_proj" in ignored
    assert "model.layers.0.self_attn.q_proj" not in ignored
    assert completion and completion[1]


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


def test_an_invalid_field_exits_2_with_one_line_naming_it_as_render_does(tmp_path, capsys):
    manifest = (EXAMPLES / "demo-modeldeployment.yaml").read_text()
    path = write_manifest(tmp_path, manifest.replace("mode: merged", "mode: both"))
    rc = main(["run", str(path), "--models-root", str(tmp_path), "--no-serve"])
    run_error = capsys.readouterr().err.strip()
    assert main(["render", str(path)]) == 2
    render_error = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(run_error.splitlines()) == 1
    assert f"{path}: spec.serving.mode:" in run_error
    assert run_error.split(": ", 1)[1] == render_error.split(": ", 1)[1]  # after "lorafuse CMD"


def test_adapter_mode_serves_a_pinned_hub_base_at_its_revision_on_loopback(tmp_path):
    spec = ModelDeploymentSpec.model_validate({
        "base": {"source": "hf://acme/tiny-llama", "revision": "0123abc"},
        "adapters": [{"name": "support", "source": "/models/adapters/support"}],
        "serving": {"mode": "adapter", "maxModelLen": 512},
    })
    target = ServingTarget("adapter", size_serving(spec, "adapter", None))
    args = vllm_args(local_vllm_options("bot", spec, target, LocalPaths.under(tmp_path), 8123))
    assert args[args.index("--model") + 1] == "acme/tiny-llama"
    assert args[args.index("--revision") + 1] == "0123abc"
    assert args[args.index("--lora-modules") + 1] == f"bot={tmp_path / 'adapters' / 'support'}"
    assert (args[args.index("--host") + 1], args[args.index("--port") + 1]) == ("127.0.0.1", "8123")
    assert args[args.index("--max-model-len") + 1] == "512"
    assert "--max-num-seqs" not in args  # auto: left to vLLM
