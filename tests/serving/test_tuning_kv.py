"""vLLM's KV block accounting, checked against numbers worked out by hand in each test."""

from lorafuse.serving.kv_cache import KvLayout, cdiv, kv_capacity, longest_fitting_len
from lorafuse.serving.model_shape import ModelShape
from lorafuse.serving.tuning import kv_cache_tokens_for_budget, kv_layout

GIB = 2**30


def shape(**fields) -> ModelShape:
    values = dict(
        model_type="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
        max_position_embeddings=8192, dtype="bfloat16", weight_bytes=16 * GIB,
        float_weight_params=8 * GIB, float_weight_bytes=16 * GIB,
    )
    values.update(fields)
    return ModelShape(**values)


def test_gqa_token_cost_counts_kv_heads_not_query_heads():
    # 32 layers × (K and V) × 8 KV heads × 128 dims × 2 bytes (bfloat16)
    assert kv_layout(shape()).token_bytes == 32 * 2 * 8 * 128 * 2


def test_mqa_token_cost_uses_its_single_kv_head():
    assert kv_layout(shape(num_kv_heads=1)).token_bytes == 32 * 2 * 1 * 128 * 2


def test_tensor_parallel_splits_kv_heads_across_gpus():
    assert kv_layout(shape(), tensor_parallel=4).token_bytes == 32 * 2 * (8 // 4) * 128 * 2


def test_tensor_parallel_beyond_kv_heads_keeps_one_head_per_gpu():
    # 2 KV heads over 8 GPUs: each GPU holds a replica of one head.
    assert kv_layout(shape(num_kv_heads=2), tensor_parallel=8).token_bytes == 32 * 2 * 1 * 128 * 2


def test_fp8_kv_cache_stores_one_byte_per_element():
    assert kv_layout(shape(), kv_cache_dtype="fp8").token_bytes == 32 * 2 * 8 * 128 * 1


def test_float32_model_keeps_kv_cache_in_bfloat16():
    assert kv_layout(shape(dtype="float32")).token_bytes == 32 * 2 * 8 * 128 * 2


def test_full_attention_budget_is_cut_into_whole_blocks():
    layout = kv_layout(shape(), block_size=16)
    budget = 10 * GIB + 12345
    capacity = kv_capacity(layout, budget, 4096)
    assert capacity.num_blocks == budget // (16 * 32 * 2 * 8 * 128 * 2)
    assert capacity.reported_tokens == capacity.num_blocks * 16


def test_reported_tokens_count_whole_blocks_per_request():
    # 200 tokens take 2 blocks of 128, so vLLM reports blocks / 2 requests × 200 tokens.
    capacity = kv_cache_tokens_for_budget(
        shape(num_layers=2, num_kv_heads=2, head_dim=32), GIB,
        max_model_len=200, max_num_batched_tokens=512,
    )
    blocks = GIB // (128 * 2 * 2 * 2 * 32 * 2)
    assert capacity.num_blocks == blocks
    assert capacity.reported_tokens == int(blocks / 2 * 200)


def test_sliding_window_request_holds_window_and_in_flight_tokens():
    layout = KvLayout(
        block_size=128, token_bytes_per_layer=128, full_layers=0, sliding_layers=2,
        sliding_window=64, in_flight_tokens=4096,
    )
    # 63 window tokens + 4096 in flight = 4159 tokens → 33 blocks, +1 for a window that
    # starts mid-block; much less than 32768 / 128 = 256 blocks of a full layer.
    assert layout.blocks_per_request(32768) == 34
    capacity = kv_capacity(layout, GIB, 32768)
    assert capacity.num_blocks == GIB // (2 * 128 * 128)
    assert capacity.reported_tokens == int(capacity.num_blocks / 34 * 32768)


def test_sliding_window_wider_than_context_holds_the_context_plus_one_block():
    layout = KvLayout(
        block_size=16, token_bytes_per_layer=64, full_layers=0, sliding_layers=4,
        sliding_window=4096, in_flight_tokens=0,
    )
    assert layout.blocks_per_request(1000) == cdiv(1000, 16) + 1


def test_mixed_layers_draw_single_layer_blocks_from_one_pool():
    # 1 sliding + 1 full layer: two groups of one layer; a block is one layer's page.
    layout = KvLayout(
        block_size=128, token_bytes_per_layer=128, full_layers=1, sliding_layers=1,
        sliding_window=64, in_flight_tokens=512,
    )
    assert layout.bytes_per_block() == 128 * 128
    assert layout.blocks_per_request(8192) == 8192 // 128 + (cdiv(63 + 512, 128) + 1)


def test_mixed_layers_in_a_five_to_one_pattern_get_six_groups():
    # Gemma-3 style: 5 sliding layers per full one → groups of one layer each.
    layout = KvLayout(
        block_size=16, token_bytes_per_layer=100, full_layers=1, sliding_layers=5,
        sliding_window=1024, in_flight_tokens=2048,
    )
    assert sorted(layout.groups()) == ["full_attention"] + ["sliding_attention"] * 5
    assert layout.bytes_per_block() == 16 * 100
    window_blocks = cdiv(1023 + 2048, 16) + 1
    assert layout.blocks_per_request(32768) == 32768 // 16 + 5 * window_blocks


def test_mixed_layers_of_similar_counts_are_padded_to_the_larger_group():
    # 4 full + 5 sliding: 5 < 1.5 × 4, so groups of 5 layers (the full group padded).
    layout = KvLayout(
        block_size=16, token_bytes_per_layer=100, full_layers=4, sliding_layers=5,
        sliding_window=256, in_flight_tokens=0,
    )
    assert sorted(layout.groups()) == ["full_attention", "sliding_attention"]
    assert layout.bytes_per_block() == 5 * 16 * 100


def test_mixed_layers_of_distinct_counts_split_into_groups_of_the_smaller():
    # 2 full + 3 sliding: 3 is not below 1.5 × 2, so groups of 2 (sliding split in two).
    layout = KvLayout(
        block_size=16, token_bytes_per_layer=100, full_layers=2, sliding_layers=3,
        sliding_window=256, in_flight_tokens=0,
    )
    assert sorted(layout.groups()) == ["full_attention"] + ["sliding_attention"] * 2
    assert layout.bytes_per_block() == 2 * 16 * 100


def test_longest_fitting_len_leaves_the_null_block_free():
    layout = KvLayout(block_size=16, token_bytes_per_layer=10, full_layers=1)
    budget = 101 * 16 * 10  # 101 blocks, one of them vLLM's null block
    assert longest_fitting_len(layout, budget, 1, 10**6) == 100 * 16
    assert longest_fitting_len(layout, budget, 4, 10**6) == 25 * 16
