"""The artifact: a loadable sharded HF checkpoint, raw-copied untouched tensors, provenance."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import torch

from lorafuse.merger.engine.merge import MergeOptions, merge
from lorafuse.merger.engine.provenance import read_provenance, update_provenance
from lorafuse.merger.files.header import read_header
from tests.merger.helpers import (
    load_output,
    merge_cli,
    model_logits,
    output_config,
    peft_logits,
    peft_merged,
)

IDS = torch.tensor([[1, 5, 9, 44, 120, 7]])


def raw_tensor_bytes(path, name) -> bytes:
    header = read_header(path)
    entry = header.tensors[name]
    with path.open("rb") as handle:
        handle.seek(header.data_start + entry.begin)
        return handle.read(entry.nbytes)


def test_small_shard_size_writes_an_index_transformers_loads(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules="all-linear")
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out, "--shard-size", "100KB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size < 100_000 + 20_000 for p in shards)
    assert index["metadata"]["total_size"] == sum(
        e.nbytes for p in shards for e in read_header(p).tensors.values())
    torch.testing.assert_close(model_logits(out, IDS), peft_logits(base, adapter, IDS),
                               rtol=1e-4, atol=1e-5)


def test_untouched_tensors_are_byte_identical(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("qwen2", dtype=torch.bfloat16)
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    names = read_header(base / "model.safetensors").tensors
    untouched = [n for n in names if "q_proj" not in n]
    assert len(untouched) > 10
    for name in untouched:
        assert raw_tensor_bytes(out / "model.safetensors", name) == raw_tensor_bytes(
            base / "model.safetensors", name), name


def test_dtype_option_converts_every_float_tensor(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out, "--dtype", "bfloat16") == 0
    ours = load_output(out)
    assert {t.dtype for t in ours.values()} == {torch.bfloat16}
    assert output_config(out)["dtype"] == "bfloat16"
    expected = peft_merged(base, adapter)
    for name, tensor in ours.items():
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name


def test_output_carries_config_generation_tokenizer_and_template(tiny_base, tiny_adapter, tmp_path):
    from transformers import AutoTokenizer

    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert merge_cli(base, [adapter], out) == 0
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<s>user: hi</s><s>assistant: "


def test_provenance_records_inputs_and_recipe(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    first = tiny_adapter(base, seed=21, target_modules=["q_proj"])
    second = tiny_adapter(base, seed=22, target_modules=["v_proj"])
    result = merge(MergeOptions(
        base=base, adapters=[first, second], out=tmp_path / "out", weights=[1.0, 0.25],
        adapter_names=["support", "tone"],
        extra_provenance={"base": {"source": "hf://org/tiny@abc123"}},
    ))
    record = read_provenance(tmp_path / "out")
    assert record == result.provenance and not result.reused
    assert record["base"]["source"] == "hf://org/tiny@abc123"
    assert record["base"]["files"]["model.safetensors"] == hashlib.sha256(
        (base / "model.safetensors").read_bytes()).hexdigest()
    assert [a["name"] for a in record["adapters"]] == ["support", "tone"]
    assert [a["weight"] for a in record["adapters"]] == [1.0, 0.25]
    assert record["adapters"][1]["files"]["adapter_model.safetensors"] == hashlib.sha256(
        (second / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert record["combine"] == {"method": "linear", "weights": [1.0, 0.25], "density": None,
                                 "seed": None}
    assert record["dtype"] == "float32" and record["quantization"] is None
    assert record["created"].endswith("Z") and record["lorafuse_version"]


def test_update_provenance_replaces_sections(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama")
    adapter = tiny_adapter(base, target_modules=["q_proj"])
    assert merge_cli(base, [adapter], tmp_path / "out") == 0
    update_provenance(tmp_path / "out", validation={"passed": True, "delta": 0.0})
    record = read_provenance(tmp_path / "out")
    assert record["validation"] == {"passed": True, "delta": 0.0}
    assert record["adapters"][0]["files"]
    assert [p.name for p in (tmp_path / "out").glob(".lorafuse.json*")] == []


def test_peak_memory_does_not_grow_with_model_size(medium_model, tmp_path):
    """Merging a ~150 MB model raises the process's peak RSS by a fraction of the model: the
    adapter, a few buffers the size of the largest tensor, and fixed I/O buffers."""
    base, adapter = medium_model
    script = (
        "import resource, sys\n"
        "from lorafuse.merger.engine.merge import MergeOptions, merge\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"merge(MergeOptions(base={str(base)!r}, adapters=[{str(adapter)!r}], "
        f"out={str(tmp_path / 'out')!r}))\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    before_kib, after_kib = map(int, result.stdout.split())
    model_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    growth = (after_kib - before_kib) * 1024
    assert model_bytes > 100e6
    assert growth < 2 * adapter_bytes + 0.3 * model_bytes, (growth, model_bytes)
