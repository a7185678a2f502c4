"""Adapter forms that cannot be merged exactly are refused by name (exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.merger.helpers import assert_close, load_output, merge_cli, peft_merged, perturb_adapter


def with_config(adapter, target, **changes):
    copy = shutil.copytree(adapter, target)
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("changes, named", [
    ({"target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters"),
    ({"peft_type": "IA3"}, "peft_type IA3"),
    ({"init_lora_weights": "pissa"}, "pissa"),
    ({"init_lora_weights": "olora"}, "olora"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
    ({"alora_invocation_tokens": [5, 6]}, "activated LoRA"),
], ids=["moe-target-parameters", "not-lora", "pissa", "olora", "layer-replication", "alora"])
def test_unmergeable_config_is_refused_by_name(changes, named, tiny_base, tiny_adapter, tmp_path,
                                               capsys):
    base = tiny_base("llama")
    adapter = with_config(tiny_adapter(base, target_modules=["q_proj"]), tmp_path / "a", **changes)
    assert merge_cli(base, [adapter], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert named in err and str(adapter / "adapter_config.json") in err
    assert not (tmp_path / "out").exists()


def test_two_dora_adapters_on_one_layer_are_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    first = tiny_adapter(base, seed=2, target_modules=["q_proj"], use_dora=True)
    second = tiny_adapter(base, seed=3, target_modules=["q_proj", "v_proj"], use_dora=True)
    assert merge_cli(base, [first, second], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "several DoRA adapters on one layer" in err and "q_proj" in err
    assert not (tmp_path / "out").exists()


def test_dora_with_a_weight_is_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, seed=2, target_modules=["q_proj"], use_dora=True)
    assert merge_cli(base, [adapter], tmp_path / "out", "--weights", "0.5") == 2
    assert "DoRA" in capsys.readouterr().err


def test_dora_and_lora_on_different_layers_merge(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    dora = tiny_adapter(base, seed=2, target_modules=["q_proj"], use_dora=True)
    lora = tiny_adapter(base, seed=3, target_modules=["v_proj"])
    assert merge_cli(base, [dora, lora], tmp_path / "out") == 0
    ours = load_output(tmp_path / "out")
    by_dora, by_lora = peft_merged(base, dora), peft_merged(base, lora)
    assert_close({k: v for k, v in ours.items() if "q_proj" in k}, by_dora)
    assert_close({k: v for k, v in ours.items() if "v_proj" in k}, by_lora)


def test_two_adapters_replacing_one_layer_differently_are_refused(tiny_base, tiny_adapter,
                                                                  tmp_path, capsys):
    base = tiny_base("llama")
    saved = tiny_adapter(base, target_modules=["q_proj"], modules_to_save=["lm_head"])
    first = perturb_adapter(saved, tmp_path / "a", "lm_head.weight", seed=1)
    second = perturb_adapter(saved, tmp_path / "b", "lm_head.weight", seed=2)
    assert merge_cli(base, [first, second], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "lm_head.weight is replaced by both a and b" in err
    assert not (tmp_path / "out").exists()


def test_overlapping_trainable_tokens_of_two_adapters_are_refused(tiny_base, tiny_adapter,
                                                                  tmp_path, capsys):
    base = tiny_base("llama")
    first = tiny_adapter(base, seed=2, target_modules=["q_proj"], trainable_token_indices=[3, 7])
    second = tiny_adapter(base, seed=3, target_modules=["v_proj"], trainable_token_indices=[7])
    assert merge_cli(base, [first, second], tmp_path / "out") == 2
    assert "overlap ([7])" in capsys.readouterr().err
