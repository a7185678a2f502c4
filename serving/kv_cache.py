"""vLLM's paged KV-cache accounting (blocks, layer groups, sliding windows) as pure arithmetic.

Mirrors vLLM 0.32 (v1/core/kv_cache_utils.py, v1/kv_cache_interface.py):
- one block holds `block_size` tokens of K and V for every layer of its group;
- layers of one attention type share a group; a model mixing sliding-window and full
  layers gets groups of equal layer count (padded) drawing blocks from one pool;
- a request of `max_model_len` tokens needs cdiv(len, block_size) blocks per full group
  and cdiv(min(window - 1 + in-flight tokens, len), block_size) + 1 per sliding group;
- vLLM logs "KV cache size: N tokens" as int(num_blocks / blocks_per_request × max_model_len)
  and "Maximum concurrency" as num_blocks / blocks_per_request.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full_attention"
SLIDING = "sliding_attention"

# Bytes per element of the KV cache for vLLM's --kv-cache-dtype values.
KV_CACHE_DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KvLayout:
    """The KV cache of one GPU (one tensor-parallel rank of one pipeline stage)."""

    block_size: int
    token_bytes_per_layer: int  # K and V of one token in one layer on this GPU
    full_layers: int
    sliding_layers: int = 0
    sliding_window: int | None = None
    in_flight_tokens: int = 0  # tokens scheduled but not yet settled (batches × batch tokens)

    @property
    def token_bytes(self) -> int:
        """Bytes one token occupies across all layers (the dense per-token cost)."""
        return self.token_bytes_per_layer * (self.full_layers + self.sliding_layers)

    def groups(self) -> list[str]:
        """The attention type of each KV cache group, in vLLM's grouping."""
        counts = {FULL: self.full_layers, SLIDING: self.sliding_layers}
        present = {kind: n for kind, n in counts.items() if n > 0}
        if len(present) <= 1:
            return list(present)
        group_size = self._group_size()
        return [kind for kind, n in present.items() for _ in range(cdiv(n, group_size))]

    def bytes_per_block(self) -> int:
        """One block of the shared pool: a page for every layer slot of the largest group."""
        present = [n for n in (self.full_layers, self.sliding_layers) if n > 0]
        layers_per_group = present[0] if len(present) == 1 else self._group_size()
        return layers_per_group * self.block_size * self.token_bytes_per_layer

    def blocks_per_request(self, max_model_len: int) -> int:
        """Blocks one request of `max_model_len` tokens holds at most, over all groups."""
        return sum(self._group_blocks(kind, max_model_len) for kind in self.groups())

    def _group_size(self) -> int:
        # vLLM: the smaller type's layer count, or the larger one when they are close
        # (within 1.5x), so that few padding layers are needed.
        small = min(self.full_layers, self.sliding_layers)
        large = max(self.full_layers, self.sliding_layers)
        return large if large < small * 1.5 else small

    def _group_blocks(self, kind: str, max_model_len: int) -> int:
        if kind == FULL:
            return cdiv(max_model_len, self.block_size)
        assert self.sliding_window is not None
        held = min(self.sliding_window - 1 + self.in_flight_tokens, max_model_len)
        # +1: the window need not start at a block boundary.
        return cdiv(held, self.block_size) + 1


@dataclass(frozen=True)
class KvCapacity:
    num_blocks: int
    blocks_per_request: int
    max_model_len: int

    @property
    def max_concurrency(self) -> float:
        """Requests of max_model_len tokens the cache holds at once (vLLM's log line)."""
        return self.num_blocks / self.blocks_per_request

    @property
    def reported_tokens(self) -> int:
        """The figure vLLM logs as "KV cache size: N tokens"."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def full_length_sequences(self) -> int:
        """Whole requests of max_model_len that fit, not counting vLLM's reserved null block."""
        return max(0, (self.num_blocks - 1) // self.blocks_per_request)


def kv_capacity(layout: KvLayout, kv_bytes: int, max_model_len: int) -> KvCapacity:
    """How vLLM divides `kv_bytes` of one GPU into blocks, for requests of `max_model_len`."""
    num_blocks = max(0, kv_bytes) // layout.bytes_per_block()
    return KvCapacity(num_blocks, layout.blocks_per_request(max_model_len), max_model_len)


def longest_fitting_len(
    layout: KvLayout, kv_bytes: int, sequences: int, upper: int
) -> int:
    """The largest max_model_len ≤ upper for which `sequences` whole requests fit (0: none)."""
    low, high, best = 1, upper, 0
    while low <= high:
        mid = (low + high) // 2
        if kv_capacity(layout, kv_bytes, mid).full_length_sequences >= sequences:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best
