"""Per architecture: the GGUF name, the hyperparameters llama.cpp reads, the Q/K layout."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from lorafuse.errors import UserError
from lorafuse.jsonfile import read_json

log = logging.getLogger(__name__)

# Hugging Face architecture -> (GGUF architecture, whether Q/K rows are permuted). As in
# llama.cpp's convert_hf_to_gguf.py: Mistral is written as `llama`, and only the llama
# graph expects the rotary halves of Q and K interleaved (Qwen2 uses the Hugging Face layout).
SUPPORTED: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Architecture:
    hf_name: str
    arch: gguf.MODEL_ARCH
    permute_qk: bool
    config: dict

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.heads)

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def tensor_names(self) -> gguf.TensorNameMap:
        return gguf.get_tensor_name_map(self.arch, self.layers)


def read_architecture(model_dir: Path) -> Architecture:
    """The model's architecture from config.json; one llama.cpp cannot run is a UserError."""
    config = read_json(Path(model_dir) / "config.json", missing="not a model directory")
    names = config.get("architectures") or [str(config.get("model_type"))]
    hf_name = names[0]
    if hf_name not in SUPPORTED:
        raise UserError(f"{model_dir}/config.json: architecture {hf_name} cannot be written as "
                        f"GGUF; supported: {', '.join(SUPPORTED)}")
    if config.get("quantization_config"):
        raise UserError(f"{model_dir}/config.json: already quantized; export the merged model")
    arch, permute = SUPPORTED[hf_name]
    return Architecture(hf_name, arch, permute, config)


def rope(config: dict) -> dict:
    """Rotary settings, wherever the transformers version put them (rope_parameters in v5)."""
    settings = dict(config.get("rope_scaling") or {})
    settings.update(config.get("rope_parameters") or {})
    settings.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    settings["rope_type"] = settings.get("rope_type") or settings.get("type") or "default"
    return settings


def add_hyperparameters(writer: gguf.GGUFWriter, model: Architecture, source: Path) -> None:
    """The `<arch>.*` keys llama.cpp's loader reads, as convert_hf_to_gguf.py writes them."""
    config = model.config
    writer.add_block_count(model.layers)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(model.heads)
    writer.add_head_count_kv(model.kv_heads)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(model.head_dim)
    if model.head_dim != int(config["hidden_size"]) // model.heads:
        writer.add_key_length(model.head_dim)
        writer.add_value_length(model.head_dim)
    _add_rope(writer, rope(config), source)
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and window < config[
            "max_position_embeddings"]:
        # llama.cpp's llama graph has no sliding window (convert_hf_to_gguf.py drops it too).
        log.warning("%s: sliding window %d is not kept in GGUF; contexts longer than it "
                    "attend to all tokens in llama.cpp", source, window)


def _add_rope(writer: gguf.GGUFWriter, settings: dict, source: Path) -> None:
    kind = settings["rope_type"]
    if kind not in ROPE_TYPES:
        raise UserError(f"{source}/config.json: rope type {kind!r} cannot be written as GGUF "
                        f"yet; supported: {', '.join(ROPE_TYPES)}")
    writer.add_rope_freq_base(float(settings["rope_theta"]))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(settings["factor"]))


def llama3_rope_factors(model: Architecture) -> np.ndarray | None:
    """Llama 3.1's per-frequency rope factors, the `rope_freqs` tensor llama.cpp multiplies in
    (the formula of convert_hf_to_gguf.py); None for every other rope type."""
    settings = rope(model.config)
    if settings["rope_type"] != "llama3":
        return None
    dim, base = model.head_dim, float(settings["rope_theta"])
    factor = float(settings.get("factor", 8.0))
    low, high = float(settings.get("low_freq_factor", 1.0)), float(
        settings.get("high_freq_factor", 4.0))
    old_context = float(settings.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def permute_for_llama(rows, heads: int):
    """Hugging Face's rotary layout -> llama.cpp's: the two halves of each head interleaved.

    `rows` is a torch tensor or numpy array whose first dimension is heads * head_dim."""
    shape = rows.shape
    split = rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
    return split.swapaxes(1, 2).reshape(shape)

