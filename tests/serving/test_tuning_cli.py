"""`lorafuse tune` from the command line: output, and one-line errors with exit code 2."""

import json

import pytest

from lorafuse.cli import main
from lorafuse.merger.demo.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tune") / "llama", "llama")


def test_json_output_holds_the_numbers_and_vllm_args(tiny_model, capsys):
    assert main(["tune", "--model", str(tiny_model), "--gpu", "L4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_model_len"] == 256  # the tiny model's max_position_embeddings
    assert result["vllm_args"][:2] == ["--max-model-len", "256"]
    assert result["model_shape"]["num_kv_heads"] == 2
    assert result["kv_cache_tokens"] > 0


def test_text_output_explains_the_numbers(tiny_model, capsys):
    assert main(["tune", "--model", str(tiny_model), "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("max_model_len    256\n")
    assert "vLLM should report a KV cache of" in out


def test_gpu_smaller_than_the_allowance_exits_2(tiny_model, capsys):
    # Half a GiB cannot hold the 2 GiB allowance, and more GPUs do not shrink it.
    code = main(["tune", "--model", str(tiny_model), "--gpu-memory", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit on 1 × GPU" in err and "it does not fit on 64 of these GPUs" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "L5"], "unknown GPU; known: T4"),
        (["--gpu", "L4", "--utilization", "1.5"], "--utilization 1.5"),
        (["--gpu", "L4", "--gpus", "0"], "--gpus '0': must be a positive whole number"),
        (["--gpu-memory", "lots"], "--gpu-memory 'lots': not a number"),
        (["--gpu", "L4", "--gpu-memory", "24"], "give exactly one"),
        ([], "give exactly one"),
        (["--gpu", "L4", "--kv-cache-dtype", "int3"], "unknown KV cache dtype 'int3'"),
        (["--gpu", "L4", "--max-model-len", "100000"], "above the model's maximum of 256"),
        (["--gpu", "L4", "--gpus", "3"], "--tensor-parallel 3: must divide"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_model, capsys, args, message):
    code = main(["tune", "--model", str(tiny_model), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_missing_model_directory_exits_2(tmp_path, capsys):
    assert main(["tune", "--model", str(tmp_path / "nowhere"), "--gpu", "L4"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_directory_without_config_exits_2(tmp_path, capsys):
    assert main(["tune", "--model", str(tmp_path), "--gpu", "L4"]) == 2
    assert "config.json: missing" in capsys.readouterr().err
