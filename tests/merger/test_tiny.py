"""The tiny model factory: loadable checkpoints and non-trivial adapters, built offline."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lorafuse.merger.demo.tiny import build_adapter, build_tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_tiny_model_loads_with_transformers_and_generates(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_tiny_model(tmp_path, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("Please reset my password.", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


def test_adapter_has_nonzero_b_matrices(tmp_path):
    base = build_tiny_model(tmp_path / "base")
    adapter = build_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    b_matrices = [t for name, t in tensors.items() if "lora_B" in name]
    assert b_matrices and all(torch.count_nonzero(t) > 0 for t in b_matrices)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
