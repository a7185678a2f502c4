"""`lorafuse quantize`: llm-compressor's AWQ/GPTQ W4A16 and FP8 on the merged model, loadable."""

import hashlib
import json
import warnings

import pytest
import torch
from safetensors import safe_open

from lorafuse.cli import main

pytest.importorskip("llmcompressor", reason="install lorafuse's `quantize` extra")

# method -> (compressed-tensors format, dtype of the stored q_proj weight, its tensor name)
EXPECTED = {
    "fp8": ("float-quantized", "F8_E4M3", "weight"),
    "gptq": ("pack-quantized", "I32", "weight_packed"),
    "awq": ("pack-quantized", "I32", "weight_packed"),
}
Q_PROJ = "model.layers.0.self_attn.q_proj"


def quantize_cli(model, out, method, *extra):
    return main([str(a) for a in ["quantize", "--model", model, "--out", out, "--method", method,
                                  *extra]])


@pytest.fixture(scope="module")
def quantized(pipeline_models, calibration_file, tmp_path_factory):
    """Each method's output from the engine-merged model (built once: calibration is slow)."""
    root = tmp_path_factory.mktemp("quantized")
    outputs, codes = {}, {}
    for method in EXPECTED:
        extra = [] if method == "fp8" else ["--calibration", calibration_file, "--samples", "8",
                                            "--seq-len", "32"]
        codes[method] = quantize_cli(pipeline_models.merged, root / method, method, *extra)
        outputs[method] = root / method
    return outputs, codes


def logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            return model(ids).logits[0]


@pytest.mark.parametrize("method", EXPECTED)
def test_output_is_compressed_tensors_in_the_methods_format(quantized, method):
    outputs, codes = quantized
    config = json.loads((outputs[method] / "config.json").read_text())["quantization_config"]
    fmt, dtype, tensor = EXPECTED[method]
    assert codes[method] == 0
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == fmt
    with safe_open(outputs[method] / "model.safetensors", "pt") as handle:
        assert handle.get_slice(f"{Q_PROJ}.{tensor}").get_dtype() == dtype


@pytest.mark.parametrize("method", EXPECTED)
def test_output_loads_in_transformers_and_stays_close_to_the_merge(
    quantized, pipeline_models, method
):
    ids = torch.tensor([[5, 40, 77, 120, 200, 33, 9, 300]])
    reference = torch.log_softmax(logits(pipeline_models.merged, ids), -1)
    candidate = torch.log_softmax(logits(quantized[0][method], ids), -1)
    kl = (reference.exp() * (reference - candidate)).sum(-1).mean()
    assert kl < 0.1
    assert not torch.equal(reference, candidate)  # it was quantized, not copied


@pytest.mark.parametrize("method", EXPECTED)
def test_provenance_keeps_the_merge_and_records_the_quantization(
    quantized, pipeline_models, calibration_file, method
):
    recorded = json.loads((quantized[0][method] / "lorafuse.json").read_text())
    merged = json.loads((pipeline_models.merged / "lorafuse.json").read_text())
    section = recorded["quantization"]
    assert recorded["base"] == merged["base"]
    assert recorded["adapters"] == merged["adapters"]
    assert section["method"] == method
    assert section["scheme"] == ("FP8_DYNAMIC" if method == "fp8" else "W4A16")
    if method == "fp8":
        assert section["calibration"] is None
    else:
        digest = hashlib.sha256(calibration_file.read_bytes()).hexdigest()
        assert section["calibration"] == {"path": str(calibration_file), "sha256": digest,
                                          "samples": 8, "seq_len": 32}
        assert section["group_size"] == 64  # hidden size 64: groups of 128 do not fit


def test_tokenizer_files_travel_with_the_quantized_model(quantized, pipeline_models):
    out = quantized[0]["fp8"]
    assert (out / "tokenizer.json").read_bytes() == (pipeline_models.merged /
                                                     "tokenizer.json").read_bytes()


def test_repeating_the_same_quantization_keeps_the_output(quantized, pipeline_models, capsys):
    out = quantized[0]["fp8"]
    before = (out / "model.safetensors").stat().st_mtime_ns
    rc = quantize_cli(pipeline_models.merged, out, "fp8")
    assert rc == 0
    assert "verified existing" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def bad_input(capsys, out, *args):
    rc = main([str(a) for a in args])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2
    assert len(errors) == 1, errors  # one line (progress bars of a model load aside)
    err = errors[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no staging leftovers
    return err


def test_unknown_method_exits_2(pipeline_models, tmp_path, capsys):
    out = tmp_path / "q"
    err = bad_input(capsys, out, "quantize", "--model", pipeline_models.merged, "--out", out,
                    "--method", "int3")
    assert "'int3': unknown" in err


def test_gptq_without_calibration_exits_2(pipeline_models, tmp_path, capsys):
    out = tmp_path / "q"
    err = bad_input(capsys, out, "quantize", "--model", pipeline_models.merged, "--out", out,
                    "--method", "gptq")
    assert "calibration" in err


def test_too_few_calibration_samples_exits_2(pipeline_models, calibration_file, tmp_path,
                                             capsys):
    out = tmp_path / "q"
    err = bad_input(capsys, out, "quantize", "--model", pipeline_models.merged, "--out", out,
                    "--method", "awq", "--calibration", calibration_file, "--samples", "500")
    assert f"{calibration_file}: 32 calibration samples, 500 asked for" in err


def test_malformed_calibration_line_is_named(pipeline_models, tmp_path, capsys):
    out = tmp_path / "q"
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    err = bad_input(capsys, out, "quantize", "--model", pipeline_models.merged, "--out", out,
                    "--method", "gptq", "--calibration", calibration, "--samples", "1")
    assert f"{calibration}:2: missing 'text' or 'prompt'" in err


def test_architecture_without_linear_layers_exits_2(tiny_base, tmp_path, capsys):
    out, gpt2 = tmp_path / "q", tiny_base("gpt2")
    err = bad_input(capsys, out, "quantize", "--model", gpt2, "--out", out,
                    "--method", "fp8")
    assert "GPT2LMHeadModel has no torch.nn.Linear layers" in err


# --- layers kept unquantized (--ignore) -------------------------------------------------------

LAYER_1 = r"re:model\.layers\.1\."


@pytest.fixture(scope="module")
def partly_quantized(pipeline_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("partly") / "fp8"
    assert quantize_cli(pipeline_models.merged, out, "fp8", "--ignore", LAYER_1) == 0
    return out


def test_ignored_layers_keep_the_merged_weights_and_the_rest_is_quantized(
    partly_quantized, pipeline_models
):
    kept = "model.layers.1.self_attn.q_proj.weight"
    with safe_open(pipeline_models.merged / "model.safetensors", "pt") as merged:
        original = merged.get_tensor(kept)
    with safe_open(partly_quantized / "model.safetensors", "pt") as handle:
        assert torch.equal(handle.get_tensor(kept), original)
        assert handle.get_slice(f"{Q_PROJ}.weight").get_dtype() == "F8_E4M3"


def test_the_served_config_and_provenance_name_the_ignored_layers(partly_quantized):
    config = json.loads((partly_quantized / "config.json").read_text())["quantization_config"]
    assert "model.layers.1.mlp.down_proj" in config["ignore"]
    assert "model.layers.0.mlp.down_proj" not in config["ignore"]
    section = json.loads((partly_quantized / "lorafuse.json").read_text())["quantization"]
    assert section["ignore"] == ["lm_head", LAYER_1]


def test_the_same_quantization_with_other_ignored_layers_is_refused_over_it(
    partly_quantized, pipeline_models, capsys
):
    rc = quantize_cli(pipeline_models.merged, partly_quantized, "fp8")
    assert rc == 2
    assert "holds a different quantization" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "ignore", "message"),
    [
        ("fp8", r"re:model\.layer\.1\.", r"'re:model\\.layer\\.1\\.': matches no linear layer"),
        ("fp8", "model.layers.0.mlp.gate_proj",
         "keeps model.layers.0.mlp.gate_proj but not model.layers.0.mlp.up_proj"),
        ("fp8", "re:layers.(1", "not a regular expression"),
        ("fp8", "Linear", "nothing is left to quantize"),
        ("gguf-q8_0", "lm_head", "ignore applies to awq, gptq and fp8, not to gguf-q8_0"),
    ],
    ids=["matches-no-layer", "splits-a-layer-vllm-fuses", "not-a-regex", "keeps-every-layer",
         "with-a-gguf-method"],
)
def test_a_bad_ignore_exits_2_with_one_line_naming_it(
    pipeline_models, tmp_path, capsys, method, ignore, message
):
    out = tmp_path / "q"
    err = bad_input(capsys, out, "quantize", "--model", pipeline_models.merged, "--out", out,
                    "--method", method, "--ignore", ignore)
    assert message in err
