"""Bad input through the real CLI: exit 2, one line naming file and problem, nothing written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.merger.helpers import (
    assert_close,
    edit_json,
    fails_cleanly,
    first_key,
    load_output,
    merge_cli,
    peft_merged,
    rewrite_header,
    tree_digest,
)


@pytest.fixture
def inputs(tiny_base, tiny_adapter, tmp_path):
    """Private copies of a base and an adapter that a test may damage."""
    base = shutil.copytree(tiny_base("llama"), tmp_path / "base")
    source = tiny_adapter(tiny_base("llama"), target_modules=["q_proj", "v_proj"])
    adapter = shutil.copytree(source, tmp_path / "adapter")
    return base, adapter


def test_adapter_for_another_base_is_a_shape_mismatch(inputs, tiny_base, tiny_adapter, tmp_path,
                                                      capsys):
    base, _ = inputs
    other = tiny_adapter(tiny_base("llama", hidden_size=32, intermediate_size=64),
                         target_modules=["q_proj"])
    line = fails_cleanly(capsys, base, [other], tmp_path / "out", expect="shape",
                         names=other / "adapter_model.safetensors")
    assert "[64, 64]" in line and "[32, 32]" in line


def test_target_module_missing_from_base(inputs, tiny_base, tiny_adapter, tmp_path, capsys):
    base, _ = inputs
    gpt2_adapter = tiny_adapter(tiny_base("gpt2"), target_modules=["c_attn"])
    fails_cleanly(capsys, base, [gpt2_adapter], tmp_path / "out",
                  expect="'transformer.h.0.attn.c_attn.weight', which the base model does not",
                  names=gpt2_adapter / "adapter_model.safetensors")


def test_missing_adapter_config(inputs, tmp_path, capsys):
    base, adapter = inputs
    (adapter / "adapter_config.json").unlink()
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="missing",
                  names=adapter / "adapter_config.json")


@pytest.mark.parametrize("content, expect", [
    ("{not json", "invalid JSON"),
    ('{"r": 8}', "no peft_type"),
    ('{"peft_type": "LORA", "r": "eight"}', "invalid field 'r'"),
])
def test_invalid_adapter_config(content, expect, inputs, tmp_path, capsys):
    base, adapter = inputs
    (adapter / "adapter_config.json").write_text(content)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect=expect,
                  names=adapter / "adapter_config.json")


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_base_weights(inputs, tmp_path, capsys):
    base, adapter = inputs
    truncate(base / "model.safetensors")
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="truncated",
                  names=base / "model.safetensors")


def test_corrupt_base_header(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = base / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff\xfe garbage"[:8]
    path.write_bytes(bytes(data))
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="corrupt", names=path)


def test_truncated_adapter_weights(inputs, tmp_path, capsys):
    base, adapter = inputs
    truncate(adapter / "adapter_model.safetensors")
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="truncated",
                  names=adapter / "adapter_model.safetensors")


def test_missing_base_path(inputs, tmp_path, capsys):
    _, adapter = inputs
    missing = tmp_path / "no-such-model"
    fails_cleanly(capsys, missing, [adapter], tmp_path / "out", expect="not found",
                  names=missing)


def test_out_that_is_not_an_artifact_is_left_alone(inputs, tmp_path, capsys):
    base, adapter = inputs
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert merge_cli(base, [adapter], out) == 2
    err = capsys.readouterr().err
    assert "not a lorafuse artifact" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_pickle_adapter_is_refused_without_allow_pickle(inputs, tmp_path, capsys):
    base, adapter = inputs
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="--allow-pickle",
                  names=adapter / "adapter_model.bin")


def test_pickle_adapter_loads_with_allow_pickle(inputs, tmp_path):
    base, adapter = inputs
    expected = peft_merged(base, adapter)
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()
    assert merge_cli(base, [adapter], tmp_path / "out", "--allow-pickle") == 0
    assert_close(load_output(tmp_path / "out"), expected)


def test_pickle_with_code_is_refused_even_with_allow_pickle(inputs, tmp_path, capsys):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    base, adapter = inputs
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"x": Exploit()}))
    line = fails_cleanly(capsys, base, [adapter], tmp_path / "out", "--allow-pickle",
                         expect="weights_only=True", names=adapter / "adapter_model.bin")
    assert "pwned" not in line


@pytest.mark.parametrize("method", ["bitsandbytes", "gptq", "awq", "compressed-tensors"])
def test_quantized_base_is_refused(method, inputs, tmp_path, capsys):
    base, adapter = inputs
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (base / "config.json").write_text(json.dumps(config))
    line = fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="unquantized",
                         names=base / "config.json")
    assert method in line


def test_non_finite_merge_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)
    tensors[key][0, 0] = float("inf")
    save_file(tensors, path, metadata={"format": "pt"})
    line = fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="not finite",
                         names="model.layers.1.self_attn.v_proj.weight")
    assert "adapter" in line


def test_unknown_adapter_key_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"] = torch.ones(2, 2)
    save_file(tensors, path, metadata={"format": "pt"})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="lora_C", names=path)


def test_adapter_key_matching_nothing_names_key_and_file(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    renamed = {k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.q_projx"): v
               for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out",
                  expect="model.layers.0.self_attn.q_projx.weight", names=path)


def test_overflow_when_rounding_to_float16_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_B" in k)
    tensors[key] = tensors[key] * 1e6  # finite in float32, far beyond float16's 65504
    save_file(tensors, path, metadata={"format": "pt"})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", "--dtype", "float16",
                  expect="not finite", names="model.layers.0.self_attn.q_proj.weight")


# --- malformed adapter configs ------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_that_is_not_positive_is_refused(rank, inputs, tmp_path, capsys):
    base, adapter = inputs
    edit_json(adapter / "adapter_config.json", r=rank)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="invalid field 'r'",
                  names=adapter / "adapter_config.json")


@pytest.mark.parametrize("alpha", ["sixteen", float("nan"), [16]])
def test_alpha_that_is_not_a_finite_number_is_refused(alpha, inputs, tmp_path, capsys):
    base, adapter = inputs
    edit_json(adapter / "adapter_config.json", lora_alpha=alpha)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="invalid field 'lora_alpha'",
                  names=adapter / "adapter_config.json")


@pytest.mark.parametrize("indices", [[], [-1], [3, 3], {"embed_tokens": []}])
def test_bad_trainable_token_indices_are_refused(indices, inputs, tmp_path, capsys):
    base, adapter = inputs
    edit_json(adapter / "adapter_config.json", trainable_token_indices=indices)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out",
                  expect="invalid field 'trainable_token_indices",
                  names=adapter / "adapter_config.json")


def test_deeply_nested_adapter_config_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    nested = "[" * 200_000 + "]" * 200_000
    (adapter / "adapter_config.json").write_text(f'{{"peft_type": "LORA", "x": {nested}}}')
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="nested too deeply",
                  names=adapter / "adapter_config.json")


CATASTROPHIC = r"([a-z_.0-9]+)+X"  # re backtracks for ever on any module name


@pytest.mark.parametrize("field, value", [
    ("rank_pattern", {CATASTROPHIC: 4}),
    ("alpha_pattern", {CATASTROPHIC: 4.0}),
    ("target_modules", CATASTROPHIC),
])
def test_regex_that_would_backtrack_for_ever_is_refused_in_seconds(field, value, inputs,
                                                                   tmp_path, capsys):
    base, adapter = inputs
    edit_json(adapter / "adapter_config.json", **{field: value})
    started = time.monotonic()
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="catastrophic backtracking",
                  names=adapter / "adapter_config.json")
    assert time.monotonic() - started < 30


def test_regex_that_does_not_compile_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    edit_json(adapter / "adapter_config.json", rank_pattern={"q_proj(": 4})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out",
                  expect="not a valid regular expression", names=adapter / "adapter_config.json")


# --- malformed adapter tensors and safetensors headers ------------------------------------


def test_lora_matrix_that_is_not_2d_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = first_key(path, "lora_A")
    tensors[key] = torch.tensor(1.0)
    save_file(tensors, path, metadata={"format": "pt"})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="low-rank pair", names=path)


def test_lora_matrix_that_is_not_floating_point_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = first_key(path, "lora_A")
    tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, path, metadata={"format": "pt"})
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="not a floating-point",
                  names=path)


def _set_entry(field: str, value):
    def edit(header: dict) -> dict:
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name][field] = value
        return header
    return edit


HEADER_DAMAGE = {
    "unknown dtype": (_set_entry("dtype", "F13"), "unknown dtype 'F13'"),
    "negative dims": (_set_entry("shape", [-2, -32]), "non-negative integers"),
    "float dims": (_set_entry("shape", [2.5, 16]), "non-negative integers"),
    "list metadata": (lambda h: {**h, "__metadata__": ["format", "pt"]}, "__metadata__"),
    "nested metadata": (lambda h: {**h, "__metadata__": {"format": {"x": 1}}}, "__metadata__"),
    "deep nesting": (lambda h: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                     "nested too deeply"),
}


@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
@pytest.mark.parametrize("which", ["base", "adapter"])
def test_malformed_safetensors_header_is_refused(which, damage, inputs, tmp_path, capsys):
    base, adapter = inputs
    path = (base / "model.safetensors" if which == "base"
            else adapter / "adapter_model.safetensors")
    edit, expect = HEADER_DAMAGE[damage]
    rewrite_header(path, edit)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect=expect, names=path)


# --- where the inputs and the output are --------------------------------------------------


def test_out_equal_to_the_base_folder_is_refused(inputs, capsys):
    base, adapter = inputs
    before = tree_digest(base, adapter)
    assert merge_cli(base, [adapter], base) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert tree_digest(base, adapter) == before


def test_out_inside_an_adapter_folder_is_refused(inputs, capsys):
    base, adapter = inputs
    out = adapter / "merged"
    fails_cleanly(capsys, base, [adapter], out, expect="inside the input folder", names=adapter)


def test_base_without_config_json_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    (base / "config.json").unlink()
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="missing",
                  names=base / "config.json")
