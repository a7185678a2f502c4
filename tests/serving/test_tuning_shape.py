"""read_model_shape: config.json families and safetensors headers, and bad model directories."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lorafuse.errors import UserError
from lorafuse.serving.model_shape import read_model_shape

LLAMA = {
    "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 8,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100,
    "max_position_embeddings": 4096, "dtype": "bfloat16",
}


def write_model(directory, config, tensors=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    tensors = tensors if tensors is not None else {"w": torch.zeros(4, 4, dtype=torch.bfloat16)}
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_weight_bytes_sum_every_tensor_as_stored_across_shards(tmp_path):
    model = write_model(tmp_path / "m", LLAMA, {"a": torch.zeros(10, 3, dtype=torch.bfloat16)})
    second = {
        "packed": torch.zeros(7, dtype=torch.int32),
        "fp8": torch.zeros(5, dtype=torch.float8_e4m3fn),
    }
    save_file(second, str(model / "model-00002.safetensors"))
    shape = read_model_shape(model)
    assert shape.weight_bytes == 10 * 3 * 2 + 7 * 4 + 5 * 1
    assert (shape.float_weight_params, shape.float_weight_bytes) == (30, 60)


def test_gqa_fields_are_read(tmp_path):
    shape = read_model_shape(write_model(tmp_path / "m", LLAMA))
    assert (shape.num_layers, shape.num_attention_heads, shape.num_kv_heads) == (4, 8, 2)
    assert shape.head_dim == 64 // 8


def test_missing_kv_heads_field_means_one_kv_head_per_attention_head(tmp_path):
    config = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_kv_heads == 8


def test_null_kv_heads_field_means_one_kv_head_per_attention_head(tmp_path):
    config = {**LLAMA, "num_key_value_heads": None}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_kv_heads == 8


def test_explicit_head_dim_wins_over_hidden_size_by_heads(tmp_path):
    shape = read_model_shape(write_model(tmp_path / "m", {**LLAMA, "head_dim": 32}))
    assert shape.head_dim == 32


def test_gpt2_field_names_are_understood(tmp_path):
    config = {
        "model_type": "gpt2", "n_layer": 3, "n_embd": 48, "n_head": 6, "n_positions": 512,
        "vocab_size": 50, "torch_dtype": "float32",
    }
    shape = read_model_shape(write_model(tmp_path / "m", config))
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (3, 6, 8)
    assert (shape.max_position_embeddings, shape.intermediate_size, shape.dtype) == (
        512, 4 * 48, "float32",
    )


def test_falcon_multi_query_flag_means_one_kv_head(tmp_path):
    config = {**LLAMA, "model_type": "falcon", "multi_query": True, "num_key_value_heads": None}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_kv_heads == 1


def test_sliding_window_applies_to_every_layer_without_layer_types(tmp_path):
    shape = read_model_shape(write_model(tmp_path / "m", {**LLAMA, "sliding_window": 256}))
    assert (shape.sliding_window, shape.num_sliding_layers) == (256, 4)


def test_layer_types_say_which_layers_slide(tmp_path):
    kinds = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    config = {**LLAMA, "sliding_window": 128, "layer_types": kinds}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_sliding_layers == 2


def test_qwen2_without_use_sliding_window_has_no_window(tmp_path):
    config = {**LLAMA, "model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}
    assert read_model_shape(write_model(tmp_path / "m", config)).sliding_window is None


def test_qwen2_max_window_layers_keeps_the_first_layers_full(tmp_path):
    config = {
        **LLAMA, "model_type": "qwen2", "sliding_window": 64, "use_sliding_window": True,
        "max_window_layers": 3,
    }
    assert read_model_shape(write_model(tmp_path / "m", config)).num_sliding_layers == 1


def test_gemma3_without_layer_types_slides_five_of_every_six_layers(tmp_path):
    config = {**LLAMA, "model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window": 512}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_sliding_layers == 10


def test_linear_rope_scaling_extends_max_positions(tmp_path):
    config = {**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    assert read_model_shape(write_model(tmp_path / "m", config)).max_position_embeddings == 16384


def test_yarn_max_positions_are_already_scaled(tmp_path):
    config = {**LLAMA, "rope_scaling": {"type": "yarn", "factor": 4.0}}
    assert read_model_shape(write_model(tmp_path / "m", config)).max_position_embeddings == 4096


def test_tokenizer_model_max_length_caps_max_positions(tmp_path):
    model = write_model(tmp_path / "m", LLAMA)
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    assert read_model_shape(model).max_position_embeddings == 2048


def test_multimodal_config_reads_the_text_config(tmp_path):
    config = {"model_type": "llava", "text_config": LLAMA, "vision_config": {"hidden_size": 8}}
    assert read_model_shape(write_model(tmp_path / "m", config)).num_layers == 4


def test_quantization_method_is_recorded(tmp_path):
    config = {**LLAMA, "quantization_config": {"quant_method": "compressed-tensors"}}
    shape = read_model_shape(write_model(tmp_path / "m", config))
    assert shape.quantization == "compressed-tensors"


def test_missing_config_json_is_a_user_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match=r"config\.json: missing"):
        read_model_shape(tmp_path / "m")


def test_directory_without_safetensors_is_a_user_error(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA))
    (model / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match=r"no \*\.safetensors files"):
        read_model_shape(model)


def test_corrupt_safetensors_header_is_a_user_error(tmp_path):
    model = write_model(tmp_path / "m", LLAMA)
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(UserError, match="unreadable safetensors header"):
        read_model_shape(model)


def test_invalid_config_json_is_a_user_error(tmp_path):
    model = write_model(tmp_path / "m", LLAMA)
    (model / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        read_model_shape(model)


def test_config_without_layer_count_is_a_user_error(tmp_path):
    config = {k: v for k, v in LLAMA.items() if k != "num_hidden_layers"}
    with pytest.raises(UserError, match="missing num_hidden_layers"):
        read_model_shape(write_model(tmp_path / "m", config))


def test_nonsense_head_count_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="num_attention_heads must be a positive integer"):
        read_model_shape(write_model(tmp_path / "m", {**LLAMA, "num_attention_heads": -8}))
