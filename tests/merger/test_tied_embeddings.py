"""Tied input/output embeddings: kept tied when both sides stay equal, untied otherwise."""

from __future__ import annotations

import pytest
import torch

from tests.merger.helpers import (
    assert_close,
    load_output,
    merge_cli,
    model_logits,
    output_config,
    peft_logits,
    peft_merged,
    perturb_adapter,
)

IDS = torch.tensor([[1, 17, 42, 99, 5, 300, 7]])


@pytest.fixture(scope="module")
def tied_base(tiny_base):
    return tiny_base("llama", tie_word_embeddings=True)


def test_adapter_away_from_embeddings_keeps_the_tie(tied_base, tiny_adapter, tmp_path):
    adapter = tiny_adapter(tied_base, target_modules=["q_proj", "v_proj"])
    assert merge_cli(tied_base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    assert "lm_head.weight" not in ours
    assert output_config(tmp_path / "out")["tie_word_embeddings"] is True
    assert_close(ours, peft_merged(tied_base, adapter))


@pytest.mark.parametrize("targets", [["lm_head"], ["embed_tokens"]], ids=["lm_head", "embed"])
def test_lora_on_one_side_unties_and_matches_adapter_on_base(targets, tied_base, tiny_adapter,
                                                             tmp_path):
    adapter = tiny_adapter(tied_base, target_modules=targets + ["q_proj"])
    assert merge_cli(tied_base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    assert output_config(tmp_path / "out")["tie_word_embeddings"] is False
    assert not torch.equal(ours["lm_head.weight"], ours["model.embed_tokens.weight"])
    torch.testing.assert_close(model_logits(tmp_path / "out", IDS),
                               peft_logits(tied_base, adapter, IDS), rtol=1e-4, atol=1e-5)


def test_modules_to_save_lm_head_unties(tied_base, tiny_adapter, tmp_path):
    saved = tiny_adapter(tied_base, target_modules=["q_proj"], modules_to_save=["lm_head"])
    adapter = perturb_adapter(saved, tmp_path / "adapter", "lm_head.weight")
    assert merge_cli(tied_base, [adapter], tmp_path / "out") == 0
    assert output_config(tmp_path / "out")["tie_word_embeddings"] is False
    torch.testing.assert_close(model_logits(tmp_path / "out", IDS),
                               peft_logits(tied_base, adapter, IDS), rtol=1e-4, atol=1e-5)


def test_ensure_weight_tying_lora_keeps_the_tie(tied_base, tiny_adapter, tmp_path):
    # PEFT's own merge_and_unload adds the shared update twice here (both tied LoRA layers
    # merge into the one shared weight); adapter-on-base is the reference instead.
    adapter = tiny_adapter(tied_base, target_modules=["embed_tokens", "lm_head"],
                           ensure_weight_tying=True)
    assert merge_cli(tied_base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    assert "lm_head.weight" not in ours
    assert output_config(tmp_path / "out")["tie_word_embeddings"] is True
    torch.testing.assert_close(model_logits(tmp_path / "out", IDS),
                               peft_logits(tied_base, adapter, IDS), rtol=1e-4, atol=1e-5)


def test_trainable_tokens_on_tied_embeddings_keep_the_tie(tied_base, tiny_adapter, tmp_path):
    saved = tiny_adapter(tied_base, target_modules=["q_proj"], trainable_token_indices=[4, 17])
    adapter = perturb_adapter(saved, tmp_path / "adapter", "trainable_tokens_delta")
    assert merge_cli(tied_base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    assert "lm_head.weight" not in ours
    assert_close(ours, peft_merged(tied_base, adapter))
    torch.testing.assert_close(model_logits(tmp_path / "out", IDS),
                               peft_logits(tied_base, adapter, IDS), rtol=1e-4, atol=1e-5)
