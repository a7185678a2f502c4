"""An adapter trained with added tokens: the merged model's vocabulary and tokenizer follow it."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.merger.helpers import assert_close, load_output, merge_cli, output_config

NEW_TOKENS = ["<ticket>", "</ticket>", "<refund>", "<invoice>", "<agent>"]


def build_resized_adapter(base, out, modules_to_save, target_modules):
    """What a fine-tune that adds tokens saves: LoRA + full embedding layers + tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorafuse.merger.demo.tiny import randomize_lora

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(NEW_TOKENS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base)
        model.resize_token_embeddings(len(tokenizer))
        config = LoraConfig(r=8, lora_alpha=16, target_modules=target_modules,
                            modules_to_save=modules_to_save, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        randomize_lora(peft_model, seed=4)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "modules_to_save" in name:
                    param.add_(0.05 * torch.randn_like(param))
        peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, len(tokenizer)


def peft_resized_merge(base, adapter, vocab):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base)
        model.resize_token_embeddings(vocab)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("save, targets", [
    (["embed_tokens", "lm_head"], ["q_proj"]),
    (None, ["embed_tokens", "lm_head", "q_proj"]),
], ids=["modules_to_save", "lora_with_saved_embeddings"])
def test_resized_vocabulary_follows_the_adapter(save, targets, tiny_base, tmp_path):
    from transformers import AutoTokenizer

    base = tiny_base("llama")
    adapter, vocab = build_resized_adapter(base, tmp_path / "adapter", save, targets)
    assert merge_cli(base, [adapter], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    assert ours["model.embed_tokens.weight"].shape[0] == vocab == 384 + len(NEW_TOKENS)
    assert output_config(tmp_path / "out")["vocab_size"] == vocab
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == vocab
    assert_close(ours, peft_resized_merge(base, adapter, vocab))
