"""tune(): memory split, max_model_len / max_num_seqs choices, explicit values, refusals."""

import pytest

from lorafuse.errors import UserError
from lorafuse.serving.gpus import GPUS, find_gpu
from lorafuse.serving.kv_cache import cdiv
from lorafuse.serving.model_shape import ModelShape
from lorafuse.serving.tuning import make_request, tune

GIB = 2**30
BLOCK = 16  # vLLM's block size on CUDA


def llama_8b(**fields) -> ModelShape:
    """Llama-3-8B's shape: 8,030,261,248 bfloat16 parameters."""
    values = dict(
        model_type="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
        max_position_embeddings=8192, dtype="bfloat16", weight_bytes=8_030_261_248 * 2,
        float_weight_params=8_030_261_248, float_weight_bytes=8_030_261_248 * 2,
    )
    values.update(fields)
    return ModelShape(**values)


TOKEN_BYTES = 32 * 2 * 8 * 128 * 2  # layers × (K, V) × KV heads × head dim × bfloat16


def blocks(result) -> int:
    return result.kv_cache_bytes_per_gpu // (BLOCK * result.kv_bytes_per_token)


def test_kv_cache_is_usable_memory_less_weights_and_allowance():
    result = tune(llama_8b(), make_request(gpu_memory_gib=80, utilization=0.9))
    usable = int(80 * GIB * 0.9)
    allowance = sum(result.allowance_bytes_per_gpu.values())
    assert result.kv_cache_bytes_per_gpu == usable - 8_030_261_248 * 2 - allowance


def test_kv_tokens_are_whole_blocks_of_the_kv_cache():
    result = tune(llama_8b(), make_request(gpu_memory_gib=80, max_model_len=4096))
    assert result.kv_bytes_per_token == TOKEN_BYTES
    assert result.kv_cache_tokens == result.kv_cache_bytes_per_gpu // (BLOCK * TOKEN_BYTES) * BLOCK


def test_enforce_eager_returns_the_cuda_graph_allowance_to_the_kv_cache():
    graphs = tune(llama_8b(), make_request(gpu="H100"))
    eager = tune(llama_8b(), make_request(gpu="H100", enforce_eager=True))
    assert eager.kv_cache_bytes_per_gpu - graphs.kv_cache_bytes_per_gpu == 1 * GIB


def test_sampler_allowance_grows_by_vocab_times_26_bytes_per_sequence():
    ten = tune(llama_8b(), make_request(gpu="H100", target_concurrency=10))
    twenty = tune(llama_8b(), make_request(gpu="H100", target_concurrency=20))
    extra = ten.kv_cache_bytes_per_gpu - twenty.kv_cache_bytes_per_gpu
    assert extra == 10 * 128256 * 26


def test_forward_allowance_grows_with_batched_tokens():
    small = tune(llama_8b(), make_request(gpu="H100", max_num_batched_tokens=1024))
    large = tune(llama_8b(), make_request(gpu="H100", max_num_batched_tokens=2048))
    # per token: residual + hidden (2 × 4096) + qkv ((32 + 2 × 8) × 128) + MLP (3 × 14336), bf16
    per_token = (2 * 4096 + (32 + 16) * 128 + 3 * 14336) * 2
    assert small.kv_cache_bytes_per_gpu - large.kv_cache_bytes_per_gpu == 1024 * per_token


def test_max_model_len_is_the_models_maximum_when_it_fits():
    assert tune(llama_8b(), make_request(gpu="H100")).max_model_len == 8192


def test_max_model_len_shrinks_to_the_longest_request_that_fits():
    result = tune(llama_8b(max_position_embeddings=131072), make_request(gpu="L4"))
    # One block stays vLLM's null block; the rest hold one request.
    assert result.max_model_len == (blocks(result) - 1) * BLOCK


def test_target_context_above_max_positions_is_clamped_with_a_warning():
    result = tune(llama_8b(), make_request(gpu="H100", target_context=100_000))
    assert result.max_model_len == 8192
    assert any("above the model's 8192 positions" in w for w in result.warnings)


def test_target_context_sizes_max_num_seqs_for_whole_requests():
    result = tune(llama_8b(), make_request(gpu="A100-80", target_context=4096))
    assert result.max_num_seqs == (blocks(result) - 1) // (4096 // BLOCK)


def test_target_concurrency_shortens_context_until_all_requests_fit():
    result = tune(
        llama_8b(max_position_embeddings=131072), make_request(gpu="L40S", target_concurrency=8)
    )
    assert result.max_num_seqs == 8
    assert 8 * cdiv(result.max_model_len, BLOCK) <= blocks(result) - 1
    assert 8 * cdiv(result.max_model_len + BLOCK, BLOCK) > blocks(result) - 1


def test_default_max_num_seqs_counts_2048_token_requests():
    result = tune(llama_8b(max_position_embeddings=131072), make_request(gpu="L4"))
    assert result.max_num_seqs == (blocks(result) - 1) // (2048 // BLOCK)


def test_default_max_num_seqs_is_capped_at_vllms_default():
    small = llama_8b(num_layers=2, weight_bytes=GIB, float_weight_params=GIB // 2)
    assert tune(small, make_request(gpu="L4")).max_num_seqs == 256
    assert tune(small, make_request(gpu="H100")).max_num_seqs == 1024


def test_explicit_max_model_len_and_max_num_seqs_win():
    result = tune(llama_8b(), make_request(gpu="H100", max_model_len=1000, max_num_seqs=3))
    assert (result.max_model_len, result.max_num_seqs) == (1000, 3)


def test_explicit_max_model_len_above_max_positions_is_refused():
    with pytest.raises(UserError, match="above the model's maximum of 8192"):
        tune(llama_8b(), make_request(gpu="H100", max_model_len=9000))


def test_concurrency_that_does_not_fit_whole_is_kept_with_a_warning():
    result = tune(llama_8b(), make_request(gpu="L4", target_context=8192, target_concurrency=64))
    assert result.max_num_seqs == 64
    assert any("sequences fit at the full 8192 tokens" in w for w in result.warnings)


def test_weights_beyond_memory_are_refused_with_the_gpu_count_that_fits():
    # 100 GiB of weights on 60 GiB GPUs: two share them (50 GiB each) with room left.
    big = llama_8b(
        weight_bytes=100 * GIB, float_weight_params=50 * GIB, float_weight_bytes=100 * GIB
    )
    with pytest.raises(UserError) as error:
        tune(big, make_request(gpu_memory_gib=60, utilization=1.0))
    assert "weights alone need 100.00 GiB per GPU" in str(error.value)
    assert "smallest GPU count that fits is 2 (--gpus 2)" in str(error.value)


def test_no_room_for_one_request_is_refused_with_the_gpu_count_that_fits():
    # 15 GiB of weights on an L4 (19.8 GiB usable) leaves too little for a 65k context.
    with pytest.raises(UserError) as error:
        tune(llama_8b(max_position_embeddings=65536), make_request(gpu="L4", target_context=65536))
    assert "less than one 65536-token request needs" in str(error.value)
    assert "smallest GPU count that fits is" in str(error.value)


def test_float32_checkpoint_is_served_in_bfloat16():
    fp32 = llama_8b(
        dtype="float32", weight_bytes=8_030_261_248 * 4, float_weight_bytes=8_030_261_248 * 4
    )
    assert tune(fp32, make_request(gpu="H100")).weight_bytes_per_gpu == 8_030_261_248 * 2


def test_quantized_checkpoint_weights_count_as_stored():
    int4 = llama_8b(quantization="compressed-tensors", weight_bytes=5 * GIB)
    assert tune(int4, make_request(gpu="H100")).weight_bytes_per_gpu == 5 * GIB


def test_tensor_parallel_splits_weights_over_gpus():
    result = tune(llama_8b(), make_request(gpu="L4", gpus=2))
    assert result.tensor_parallel_size == 2
    assert result.weight_bytes_per_gpu == 8_030_261_248 * 2 // 2
    assert result.kv_bytes_per_token == TOKEN_BYTES // 2


def test_gpus_beyond_tensor_parallel_become_pipeline_stages():
    result = tune(llama_8b(), make_request(gpu="L4", gpus=4, tensor_parallel=2))
    assert result.pipeline_parallel_size == 2
    assert result.kv_bytes_per_token == TOKEN_BYTES // 2 // 2  # half the heads, half the layers


def test_tensor_parallel_must_divide_attention_heads():
    with pytest.raises(UserError, match="--tensor-parallel 3: must divide the 32 attention heads"):
        tune(llama_8b(), make_request(gpu="L4", gpus=3))


def test_fp8_kv_cache_doubles_the_tokens():
    auto = tune(llama_8b(), make_request(gpu="H100", max_model_len=4096))
    fp8 = tune(llama_8b(), make_request(gpu="H100", max_model_len=4096, kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token == TOKEN_BYTES // 2
    assert fp8.kv_cache_tokens == fp8.kv_cache_bytes_per_gpu // (BLOCK * TOKEN_BYTES // 2) * BLOCK
    assert fp8.kv_cache_tokens > 1.9 * auto.kv_cache_tokens


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown GPU; known: T4, .*H100-80"):
        tune(llama_8b(), make_request(gpu="B9000"))


def test_gpu_aliases_resolve_case_insensitively():
    assert find_gpu("h100").name == "H100-80"
    assert find_gpu("a100_40").name == "A100-40"


def test_gpu_table_lists_memory_below_the_nominal_size():
    # vLLM sees what the driver exposes, always under the card's nominal size.
    for gpu in GPUS.values():
        assert gpu.memory_gib < gpu.nominal_gb, gpu.name


def test_out_of_range_request_values_name_the_flag():
    with pytest.raises(UserError, match=r"--utilization 1\.5: Input should be less than or equal"):
        make_request(gpu="L4", utilization=1.5)


def test_lora_slots_take_their_size_from_the_kv_cache():
    plain = tune(llama_8b(), make_request(gpu="H100"))
    lora = tune(llama_8b(), make_request(gpu="H100", lora_rank=16, max_loras=2))
    h, i, q, kv = 4096, 14336, 32 * 128, 8 * 128
    # A and B of q, k, v, o, gate, up, down: rank × (inputs + outputs) each, bfloat16
    in_plus_out = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    slots = 2 * 16 * in_plus_out * 2 * 32
    assert plain.kv_cache_bytes_per_gpu - lora.kv_cache_bytes_per_gpu == slots


def test_explanation_is_one_paragraph_with_the_chosen_numbers():
    result = tune(llama_8b(), make_request(gpu="H100", target_context=4096))
    assert "\n" not in result.explanation
    assert f"max_model_len {result.max_model_len:,}" in result.explanation
    assert f"max_num_seqs {result.max_num_seqs:,}" in result.explanation
    assert f"KV cache of {result.kv_cache_tokens:,} tokens" in result.explanation


def test_vllm_args_carry_the_chosen_numbers():
    result = tune(llama_8b(), make_request(gpu="L4", gpus=2, kv_cache_dtype="fp8"))
    args = result.vllm_args()
    assert args[args.index("--max-model-len") + 1] == str(result.max_model_len)
    assert args[args.index("--max-num-seqs") + 1] == str(result.max_num_seqs)
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
