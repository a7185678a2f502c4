"""Merged tensors equal PEFT's merge_and_unload() for each adapter form PEFT can merge."""

from __future__ import annotations

import pytest


def test_plain_lora_matches_peft_llama(tiny_base, tiny_adapter, tmp_path, h):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj", "v_proj", "down_proj"])
    assert h.merge_cli(base, [adapter], tmp_path / "out") == 0
    ours = h.load_output(tmp_path / "out")
    h.assert_close(ours, h.peft_merged(base, adapter))
    assert len(h.changed_keys(ours, h.load_output(base))) == 6


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "phi3", "gpt2"])
def test_all_linear_lora_matches_peft(arch, tiny_base, tiny_adapter, tmp_path, h):
    base = tiny_base(arch)
    adapter = tiny_adapter(base, target_modules="all-linear")
    assert h.merge_cli(base, [adapter], tmp_path / "out") == 0
    h.assert_close(h.load_output(tmp_path / "out"), h.peft_merged(base, adapter))
