"""Random Llama checkpoints and PEFT LoRA adapters, written directly with safetensors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama model; the defaults are TinyLlama's 1.1B."""

    hidden: int = 2048
    layers: int = 22
    intermediate: int = 5632
    vocab: int = 32000
    heads: int = 32
    kv_heads: int = 4

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each linear layer in one decoder block."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of LlamaForCausalLM, in the order transformers saves them."""
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab, self.hidden)
        }
        for layer in range(self.layers):
            prefix = f"model.layers.{layer}"
            for name, shape in self.linear_shapes().items():
                shapes[f"{prefix}.{name}.weight"] = shape
            shapes[f"{prefix}.input_layernorm.weight"] = (self.hidden,)
            shapes[f"{prefix}.post_attention_layernorm.weight"] = (self.hidden,)
        shapes["model.norm.weight"] = (self.hidden,)
        shapes["lm_head.weight"] = (self.vocab, self.hidden)
        return shapes

    def parameter_count(self) -> int:
        return sum(_numel(shape) for shape in self.weight_shapes().values())


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _random(shape: tuple[int, ...], dtype: torch.dtype, bound: float, gen: torch.Generator):
    # uniform_ straight into the target dtype: no float32 copy, ~4x faster than randn here.
    return torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=gen)


def _shard_plan(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_shard_size: str):
    """Group tensor names into shards exactly as transformers' save_pretrained would."""
    from huggingface_hub import split_state_dict_into_shards_factory

    itemsize = torch.empty((), dtype=dtype).element_size()
    return split_state_dict_into_shards_factory(
        shapes,
        get_storage_size=lambda shape: _numel(shape) * itemsize,
        get_storage_id=lambda _shape: None,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )


def _write_model_configs(out: Path, shape: LlamaShape) -> None:
    from transformers import GenerationConfig, LlamaConfig

    from lorafuse.merger.demo.tiny import train_tokenizer

    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(out)
    # A small locally trained tokenizer: its ids all fall inside the 32000-row embedding.
    train_tokenizer().save_pretrained(out)


def _fresh_staging(out: Path) -> Path:
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out: Path) -> Path:
    (staging / COMPLETE_MARKER).write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def write_llama_checkpoint(
    out: Path,
    shape: LlamaShape = LlamaShape(),
    max_shard_size: str = "1GB",
    seed: int = 0,
) -> Path:
    """Write a random bf16 Llama checkpoint, one shard in memory at a time."""
    staging = _fresh_staging(out)
    shapes = shape.weight_shapes()
    split = _shard_plan(shapes, torch.bfloat16, max_shard_size)
    gen = torch.Generator().manual_seed(seed)
    for filename, names in split.filename_to_tensors.items():
        shard = {
            name: (
                torch.ones(shapes[name], dtype=torch.bfloat16)
                if name.endswith("norm.weight")
                else _random(shapes[name], torch.bfloat16, 0.03, gen)
            )
            for name in names
        }
        save_file(shard, staging / filename, metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": shape.parameter_count(), **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (staging / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n"
        )
    _write_model_configs(staging, shape)
    return _publish(staging, out)


def _lora_tensors(
    shape: LlamaShape, rank: int, dtype: torch.dtype, gen: torch.Generator
) -> Iterator[tuple[str, torch.Tensor]]:
    for layer in range(shape.layers):
        for name, (out_features, in_features) in shape.linear_shapes().items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            # Non-zero B (PEFT initialises it to zero, which would make the merge a no-op).
            yield f"{key}.lora_A.weight", _random((rank, in_features), dtype, 0.02, gen)
            yield f"{key}.lora_B.weight", _random((out_features, rank), dtype, 0.02, gen)


def write_lora_adapter(
    out: Path,
    base: Path,
    shape: LlamaShape = LlamaShape(),
    rank: int = 64,
    alpha: int = 128,
    dtype: torch.dtype = torch.float32,
    seed: int = 1,
) -> Path:
    """Write a PEFT LoRA adapter on every linear layer of every block, with random weights."""
    from peft import LoraConfig

    staging = _fresh_staging(out)
    gen = torch.Generator().manual_seed(seed)
    save_file(
        dict(_lora_tensors(shape, rank, dtype, gen)),
        staging / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LINEAR_MODULES),
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base),
    )
    config.save_pretrained(staging)
    return _publish(staging, out)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
