"""`lorafuse run` with a gguf-* quantization: the artifact is published and vLLM not started."""

import json
import re
from pathlib import Path

import pytest

from tests.merger.test_run import models_root, run_example  # noqa: F401 (fixture)

pytest.importorskip("gguf")


def test_gguf_example_publishes_model_gguf_and_starts_no_vllm(models_root, monkeypatch,  # noqa: F811
                                                               capsys):
    # a vLLM that would be found: the run must not start it on a GGUF
    monkeypatch.setenv("LORAFUSE_VLLM_PYTHON", "/bin/false")
    rc = run_example(models_root, "demo-gguf-modeldeployment.yaml")
    out = capsys.readouterr().out
    artifact = Path(re.search(r"^artifact: (.+)$", out, re.MULTILINE)[1])
    assert rc == 0
    assert "[quantize] exported gguf-q8_0" in out
    assert f"gguf-q8_0 artifact for download: {artifact}/model.gguf" in out
    assert (artifact / "model.gguf").is_file()
    assert json.loads((artifact / "lorafuse.json").read_text())["validation"]["passed"]
    assert "starting vLLM" not in out and "vLLM not found" not in out
