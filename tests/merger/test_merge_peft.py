"""Merged tensors equal PEFT's merge_and_unload() for each adapter form PEFT can merge."""

from __future__ import annotations

import pytest
import torch

from tests.merger.helpers import (
    assert_close,
    changed_keys,
    load_output,
    merge_cli,
    peft_merged,
    perturb_adapter,
)


def merge_and_compare(base, adapter, out, *extra):
    assert merge_cli(base, [adapter], out, *extra) == 0
    ours = load_output(out)
    assert_close(ours, peft_merged(base, adapter))
    return ours


def test_plain_lora_matches_peft_llama(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj", "v_proj", "down_proj"])
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert len(changed_keys(ours, load_output(base))) == 6


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "phi3", "gpt2"])
def test_all_linear_lora_matches_peft(arch, tiny_base, tiny_adapter, tmp_path):
    base = tiny_base(arch)
    adapter = tiny_adapter(base, target_modules="all-linear")
    merge_and_compare(base, adapter, tmp_path / "out")


def test_phi3_fused_qkv_and_gate_up_match_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("phi3")
    adapter = tiny_adapter(base, target_modules=["qkv_proj", "gate_up_proj"])
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert {k.rsplit(".", 2)[-2] for k in changed_keys(ours, load_output(base))} == {
        "qkv_proj", "gate_up_proj"}


def test_rslora_matches_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj", "o_proj"], use_rslora=True, r=16,
                           lora_alpha=8)
    merge_and_compare(base, adapter, tmp_path / "out")


def test_rank_and_alpha_patterns_match_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("qwen2")
    adapter = tiny_adapter(base, target_modules=["q_proj", "v_proj", "up_proj"],
                           rank_pattern={"v_proj": 4, r"layers\.1\.mlp\.up_proj": 2},
                           alpha_pattern={"q_proj": 64, "up_proj": 3})
    merge_and_compare(base, adapter, tmp_path / "out")


def test_layers_to_transform_changes_only_those_layers(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj", "gate_proj"], layers_to_transform=[1])
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert all(".layers.1." in k for k in changed_keys(ours, load_output(base)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dora_matches_peft(arch, tiny_base, tiny_adapter, tmp_path):
    base = tiny_base(arch)
    targets = ["q_proj", "down_proj"] if arch == "llama" else ["c_attn", "c_proj"]
    adapter = tiny_adapter(base, target_modules=targets, use_dora=True)
    merge_and_compare(base, adapter, tmp_path / "out")


def test_dora_on_embeddings_matches_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["embed_tokens", "v_proj"], use_dora=True)
    merge_and_compare(base, adapter, tmp_path / "out")


def test_lora_on_embeddings_and_lm_head_matches_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["embed_tokens", "lm_head", "k_proj"])
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    changed = changed_keys(ours, load_output(base))
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= changed


def test_gpt2_embeddings_lora_matches_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("gpt2")
    adapter = tiny_adapter(base, target_modules=["wte", "c_fc"])
    merge_and_compare(base, adapter, tmp_path / "out")


@pytest.mark.parametrize("arch, targets, bias_key", [
    ("qwen2", ["q_proj", "v_proj"], "model.layers.0.self_attn.q_proj.bias"),
    ("gpt2", ["c_attn", "c_fc"], "transformer.h.0.attn.c_attn.bias"),
])
def test_lora_bias_matches_peft(arch, targets, bias_key, tiny_base, tiny_adapter, tmp_path):
    base = tiny_base(arch)
    adapter = tiny_adapter(base, target_modules=targets, lora_bias=True)
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert bias_key in changed_keys(ours, load_output(base))


def test_lora_bias_on_layer_without_bias_is_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["o_proj"], lora_bias=True)
    assert merge_cli(base, [adapter], tmp_path / "out") == 2
    assert "has no bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_modules_to_save_matches_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    saved = tiny_adapter(base, target_modules=["q_proj"], modules_to_save=["lm_head"])
    adapter = perturb_adapter(saved, tmp_path / "adapter", "lm_head.weight")
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert "lm_head.weight" in changed_keys(ours, load_output(base))


def test_trainable_token_indices_match_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("mistral")
    saved = tiny_adapter(base, target_modules=["q_proj"], trainable_token_indices=[5, 9, 300])
    adapter = perturb_adapter(saved, tmp_path / "adapter", "trainable_tokens_delta")
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    embed = ours["model.embed_tokens.weight"]
    original = load_output(base)["model.embed_tokens.weight"]
    changed_rows = (embed != original).any(dim=1).nonzero().flatten().tolist()
    assert changed_rows == [5, 9, 300]


def test_bfloat16_base_is_within_one_rounding_of_float32_math(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama", dtype=torch.bfloat16)
    adapter = tiny_adapter(base, target_modules="all-linear")
    assert merge_cli(base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    exact = peft_merged(base, adapter, dtype=torch.float32)  # bf16 weights, exact math
    peft_bf16 = peft_merged(base, adapter, dtype=torch.bfloat16)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16, name
        ulp = torch.finfo(torch.bfloat16).eps * exact[name].abs().clamp_min(1e-30)
        # one correct rounding of the float32 result: at most half an ulp (one ulp of slack
        # for the last bit of float32 summation order)
        assert bool(((tensor.float() - exact[name]).abs() <= ulp).all()), name
        assert bool(((tensor.float() - peft_bf16[name].float()).abs() <= 2 * ulp).all()), name


def test_trained_biases_match_peft(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("gpt2")
    saved = tiny_adapter(base, target_modules=["c_attn", "c_proj"], bias="all")
    adapter = perturb_adapter(saved, tmp_path / "adapter", ".bias")
    ours = merge_and_compare(base, adapter, tmp_path / "out")
    assert "transformer.h.1.mlp.c_proj.bias" in changed_keys(ours, load_output(base))


def test_tensors_merged_in_several_row_groups_match_peft(tiny_base, tiny_adapter, tmp_path,
                                                         monkeypatch):
    from lorafuse.merger.engine import tensor_math

    # blocks of a few rows and groups of a few blocks (uneven), as a large model's tensors get
    monkeypatch.setattr(tensor_math, "BLOCK_BYTES", 4 * 64 * 3)
    monkeypatch.setattr(tensor_math, "GROUP_BYTES", 4 * 64 * 7)
    groups = []
    merge_rows = tensor_math.BlockedRows.merge

    def counted(self, offset, base, out):
        groups.append((self.recipe.name, offset))
        return merge_rows(self, offset, base, out)

    monkeypatch.setattr(tensor_math.BlockedRows, "merge", counted)
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules="all-linear")
    merge_and_compare(base, adapter, tmp_path / "out")
    assert len(groups) > 2 * len({name for name, _ in groups})
