"""A model's serving shape, read from config.json and safetensors headers (never the tensors)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lorafuse.errors import UserError
from lorafuse.jsonfile import read_json

# Config keys vary by family; the first present (and not null) wins.
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "n_head_kv", "num_kv_heads", "n_kv_heads")
_INTERMEDIATE = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
# vLLM takes the smallest of these as the model's maximum length.
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# RoPE types whose max_position_embeddings is already the scaled length (vLLM's list).
_ROPE_ALREADY_SCALED = {
    "default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling",
}
# Families that interleave sliding and full layers without a `layer_types` list in older
# configs: every n-th layer (1-based) is full, the others slide (transformers' defaults).
_SLIDING_PATTERN_DEFAULTS = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}
# Families whose `max_window_layers` says how many of the first layers use full attention.
_MAX_WINDOW_LAYER_FAMILIES = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
_TORCH_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float"}


class ModelShape(BaseModel):
    """What the tuner needs to know about a model; JSON-serializable for job results."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    sliding_window: int | None = None
    num_sliding_layers: int = 0  # layers that keep only the window; the rest are full
    dtype: str  # the checkpoint's compute dtype from config.json (float32|float16|bfloat16)
    weight_bytes: int  # sum of tensor sizes as stored (quantized tensors as they are)
    float_weight_params: int  # elements stored as floating point (re-cast to the serving dtype)
    float_weight_bytes: int  # bytes those elements take as stored
    quantization: str | None = None  # quant_method of quantization_config, if any

    @property
    def num_full_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers


def read_model_shape(model_dir: str | Path) -> ModelShape:
    """Read config.json (+ tokenizer_config.json) and the safetensors headers of `model_dir`."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory")
    config = _read_json(directory / "config.json", required=True)
    tokenizer_config = _read_json(directory / "tokenizer_config.json", required=False) or {}
    sizes = _read_weight_sizes(directory)
    return shape_from_config(config, sizes, tokenizer_config, directory)


@dataclass(frozen=True)
class WeightSizes:
    total_bytes: int
    float_params: int
    float_bytes: int


def shape_from_config(
    config: dict[str, Any],
    sizes: WeightSizes,
    tokenizer_config: dict[str, Any] | None = None,
    source: str | Path = "config.json",
) -> ModelShape:
    """Build a ModelShape from an already-parsed config (pure)."""
    where = Path(source) / "config.json" if Path(source).is_dir() else Path(source)
    text = _text_config(config)
    num_layers = _positive_int(text, _LAYERS, where)
    hidden = _positive_int(text, _HIDDEN, where)
    heads = _positive_int(text, _HEADS, where)
    kv_heads = _kv_heads(text, heads, where)
    head_dim = _optional_int(text, ("head_dim", "kv_channels")) or hidden // heads
    if head_dim <= 0:
        raise UserError(f"{where}: cannot derive head_dim from hidden size {hidden}")
    window, sliding_layers = _sliding_layers(text, num_layers)
    quant = config.get("quantization_config") or config.get("compression_config") or {}
    return ModelShape(
        model_type=str(text.get("model_type") or config.get("model_type") or "unknown"),
        num_layers=num_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_optional_int(text, _INTERMEDIATE) or 4 * hidden,
        vocab_size=_positive_int(text, ("vocab_size", "padded_vocab_size"), where),
        max_position_embeddings=_max_positions(text, tokenizer_config or {}, where),
        sliding_window=window,
        num_sliding_layers=sliding_layers,
        dtype=_config_dtype(config, text),
        weight_bytes=sizes.total_bytes,
        float_weight_params=sizes.float_params,
        float_weight_bytes=sizes.float_bytes,
        quantization=quant.get("quant_method") or quant.get("format") if quant else None,
    )


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not required and not path.is_file():
        return None
    return read_json(path, missing="missing (a model directory needs config.json)")


def _read_weight_sizes(directory: Path) -> WeightSizes:
    """Tensor sizes over every *.safetensors file, from the headers only."""
    from safetensors import safe_open  # the numpy framework reads headers without torch

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory}: no *.safetensors files (other weight formats are not read)")
    total_bytes = float_params = float_bytes = 0
    for path in files:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    piece = handle.get_slice(name)
                    dtype, numel = piece.get_dtype(), math.prod(piece.get_shape())
                    if dtype not in _DTYPE_BYTES:
                        raise UserError(f"{path}: tensor {name} has unknown dtype {dtype}")
                    total_bytes += numel * _DTYPE_BYTES[dtype]
                    if dtype in _FLOAT_DTYPES:
                        float_params += numel
                        float_bytes += numel * _DTYPE_BYTES[dtype]
        except UserError:
            raise
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise UserError(f"{path}: unreadable safetensors header ({exc})") from exc
    return WeightSizes(total_bytes, float_params, float_bytes)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model's fields under text_config."""
    nested = config.get("text_config") or config.get("language_config")
    if isinstance(nested, dict) and not any(key in config for key in _LAYERS):
        return {**nested, "model_type": nested.get("model_type", config.get("model_type"))}
    return config


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _optional_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    value = _first(config, keys)
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _positive_int(config: dict[str, Any], keys: tuple[str, ...], where: Path) -> int:
    value = _first(config, keys)
    if value is None:
        raise UserError(f"{where}: missing {keys[0]}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: {keys[0]} must be a positive integer, got {value!r}")
    return value


def _kv_heads(config: dict[str, Any], heads: int, where: Path) -> int:
    if config.get("multi_query") is True:  # Falcon-style MQA flag
        return 1
    kv_heads = _first(config, _KV_HEADS)
    if kv_heads is None:  # no field: every attention head has its own K/V (MHA)
        return heads
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads <= 0:
        raise UserError(f"{where}: num_key_value_heads must be a positive integer")
    if heads % kv_heads:
        raise UserError(f"{where}: {heads} attention heads not divisible by {kv_heads} KV heads")
    return kv_heads


def _sliding_layers(config: dict[str, Any], num_layers: int) -> tuple[int | None, int]:
    """(window, how many layers use it), following transformers' per-family rules."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False or not isinstance(window, int) or window <= 0:
        return None, 0
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        sliding = sum(1 for kind in layer_types[:num_layers] if kind == "sliding_attention")
        return (window, sliding) if sliding else (None, 0)
    model_type = str(config.get("model_type", ""))
    full_first = config.get("max_window_layers")
    if model_type in _MAX_WINDOW_LAYER_FAMILIES and isinstance(full_first, int):
        sliding = max(0, num_layers - full_first)
        return (window, sliding) if sliding else (None, 0)
    pattern = config.get("sliding_window_pattern") or _SLIDING_PATTERN_DEFAULTS.get(model_type)
    if isinstance(pattern, int) and pattern > 1:
        return window, sum(1 for i in range(num_layers) if (i + 1) % pattern)
    return window, num_layers


def _max_positions(config: dict[str, Any], tokenizer_config: dict[str, Any], where: Path) -> int:
    lengths = [config[key] for key in _MAX_LEN_KEYS if isinstance(config.get(key), int)]
    if not lengths:
        raise UserError(f"{where}: no maximum length field (max_position_embeddings or similar)")
    length = float(min(lengths))
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if isinstance(rope, dict) and "gemma3" not in str(config.get("model_type", "")):
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in _ROPE_ALREADY_SCALED and isinstance(rope.get("factor"), int | float):
            length *= rope["factor"]
    tokenizer_limit = tokenizer_config.get("model_max_length")
    if isinstance(tokenizer_limit, int | float) and 0 < tokenizer_limit < length:
        length = tokenizer_limit
    return int(length)


def _config_dtype(config: dict[str, Any], text: dict[str, Any]) -> str:
    value = text.get("dtype") or text.get("torch_dtype") or config.get("dtype")
    value = value or config.get("torch_dtype") or "bfloat16"
    name = str(value).removeprefix("torch.")
    if name not in _TORCH_DTYPE_NAMES:
        return "bfloat16"  # e.g. "auto": vLLM then picks the platform's preferred dtype
    return "float32" if name == "float" else name
