"""vLLM sizing: numbers from the spec win, `auto` asks the serving tuner."""

from __future__ import annotations

import pytest

from lorafuse.errors import UserError
from lorafuse.operator.sizing import size_serving
from lorafuse.operator.spec import ModelDeploymentSpec

SHAPE = {
    "model_type": "llama",
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 384,
    "max_position_embeddings": 4096,
    "sliding_window": None,
    "num_sliding_layers": 0,
    "dtype": "bfloat16",
    "weight_bytes": 246400,
    "float_weight_params": 123200,
    "float_weight_bytes": 246400,
    "quantization": None,
}


def _spec(raw_spec, **serving) -> ModelDeploymentSpec:
    raw_spec["serving"] = serving
    return ModelDeploymentSpec.model_validate(raw_spec)


def test_numbers_in_the_spec_are_used_as_given(raw_spec):
    sizing = size_serving(_spec(raw_spec, maxModelLen=1024, maxNumSeqs=8), "merged", SHAPE)
    assert (sizing.max_model_len, sizing.max_num_seqs) == (1024, 8)


def test_auto_on_a_large_gpu_gives_the_model_its_whole_context(raw_spec):
    sizing = size_serving(_spec(raw_spec, gpu={"type": "H100-80GB"}), "merged", SHAPE)
    assert sizing.max_model_len == SHAPE["max_position_embeddings"]
    assert sizing.max_num_seqs >= 1
    assert sizing.why


def test_an_explicit_number_is_kept_next_to_a_tuned_one(raw_spec):
    spec = _spec(raw_spec, gpu={"type": "H100-80GB"}, maxNumSeqs=3)
    sizing = size_serving(spec, "merged", SHAPE)
    assert sizing.max_num_seqs == 3 and sizing.max_model_len == 4096


def test_auto_without_a_gpu_leaves_the_numbers_to_vllm(raw_spec):
    sizing = size_serving(_spec(raw_spec, gpu={"count": 0}), "merged", SHAPE)
    assert (sizing.max_model_len, sizing.max_num_seqs) == (None, None)
    assert "no GPU" in sizing.why


def test_auto_before_the_model_shape_is_known_leaves_the_numbers_to_vllm(raw_spec):
    sizing = size_serving(_spec(raw_spec), "adapter", None)
    assert (sizing.max_model_len, sizing.max_num_seqs) == (None, None)


def test_a_model_that_cannot_fit_the_gpu_is_refused(raw_spec):
    params = 100 * 2**30  # 200 GiB in bfloat16
    huge = {
        **SHAPE,
        "weight_bytes": 2 * params,
        "float_weight_bytes": 2 * params,
        "float_weight_params": params,
    }
    with pytest.raises(UserError):
        size_serving(_spec(raw_spec, gpu={"memoryGiB": 24}), "merged", huge)
