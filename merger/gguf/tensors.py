"""The merged weights as GGUF tensors: names, layout, type, and the bytes, one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from lorafuse.errors import UserError, first_line
from lorafuse.merger.gguf.architecture import (
    Architecture,
    llama3_rope_factors,
    permute_for_llama,
)

Q = gguf.GGMLQuantizationType
# A quantized chunk is converted to float32 first: this many bytes of it at most.
CHUNK_BYTES = 64 * 1024 * 1024
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
# gguf's numpy quantizers write no Q6_K, the type llama.cpp's q4_0 keeps its output head in:
# in a Q4_0 file the embedding and output head get Q8_0, the closest type they do write.
HEAD_TYPE_FOR_Q4_0 = Q.Q8_0
HEADS = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: where it comes from and what it becomes."""

    gguf_name: str
    hf_name: str | None  # None for tensors computed here (llama3 rope factors)
    file: Path | None
    shape: tuple[int, ...]  # numpy order (rows, columns)
    ggml_type: gguf.GGMLQuantizationType
    permute_heads: int = 0  # >0: rows permuted for llama.cpp's rotary layout, per this many heads

    @property
    def nbytes(self) -> int:
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.ggml_type)))


def weight_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it (single file or sharded with an index)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{index}: unreadable index ({first_line(exc)})") from None
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{model_dir}: no model.safetensors (nor an index of shards)")
    return dict.fromkeys(_names_in(single), single)


def _names_in(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def plan_tensors(model: Architecture, files: dict[str, Path],
                 weight_type: Q) -> list[PlannedTensor]:
    """Every GGUF tensor in file order: name mapping, Q/K permutation and type per tensor."""
    names = model.tensor_names()
    shapes = _shapes(files)
    planned = []
    factors = llama3_rope_factors(model)
    if factors is not None:
        planned.append(PlannedTensor("rope_freqs.weight", None, None, factors.shape, Q.F32))
    for hf_name in sorted(files, key=_layer_order):
        if hf_name.endswith(SKIPPED_SUFFIXES) or (hf_name == "lm_head.weight" and model.tied):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"{files[hf_name]}: tensor {hf_name} has no GGUF name for "
                            f"{model.hf_name}")
        shape = shapes[hf_name]
        planned.append(PlannedTensor(
            gguf_name, hf_name, files[hf_name], shape,
            _ggml_type(gguf_name, shape, weight_type), _permute_heads(model, gguf_name)))
    return planned


def _layer_order(name: str) -> tuple:
    """Embedding, then layer by layer, then the rest: the order llama.cpp's files use."""
    parts = name.split(".")
    if "layers" in parts:
        index = parts.index("layers") + 1
        if index < len(parts) and parts[index].isdigit():
            return (1, int(parts[index]), name)
    return (0 if "embed" in name else 2, 0, name)


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for path in sorted(set(files.values())):
        try:
            with safe_open(path, framework="pt") as handle:
                names = handle.keys()
                shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in names})
        except Exception as exc:
            raise UserError(
                f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    missing = sorted(set(files) - set(shapes))
    if missing:
        raise UserError(f"{files[missing[0]]}: tensor {missing[0]} listed in the index is missing")
    return shapes


def _ggml_type(gguf_name: str, shape: tuple[int, ...], weight_type: Q) -> Q:
    """1-D tensors (norms, biases) stay F32, as llama.cpp wants; 2-D weights get the method's
    type, or F16 when a row does not split into the type's blocks (convert_hf_to_gguf.py too)."""
    if len(shape) < 2:
        return Q.F32
    chosen = HEAD_TYPE_FOR_Q4_0 if weight_type == Q.Q4_0 and gguf_name in HEADS else weight_type
    block, _ = gguf.GGML_QUANT_SIZES[chosen]
    return chosen if shape[-1] % block == 0 else Q.F16


def _permute_heads(model: Architecture, gguf_name: str) -> int:
    if not model.permute_qk:
        return 0
    if ".attn_q." in gguf_name:
        return model.heads
    if ".attn_k." in gguf_name:
        return model.kv_heads
    return 0


def tensor_bytes(planned: list[PlannedTensor], model: Architecture) -> Iterator[np.ndarray]:
    """Each planned tensor's data in GGUF encoding, in plan order; one source tensor in memory."""
    from safetensors import safe_open

    with ExitStack() as stack:
        handles = {}
        for tensor in planned:
            if tensor.hf_name is None:
                yield llama3_rope_factors(model)
                continue
            if tensor.file not in handles:
                handles[tensor.file] = stack.enter_context(safe_open(tensor.file, framework="pt"))
            source = handles[tensor.file].get_tensor(tensor.hf_name)
            if tensor.permute_heads:
                source = permute_for_llama(source, tensor.permute_heads)
            yield encode(source, tensor.ggml_type)


def encode(source: torch.Tensor, ggml_type: Q) -> np.ndarray:
    """A tensor in `ggml_type`, rounded once from its stored values."""
    if ggml_type == Q.F32:
        return source.to(torch.float32).numpy()
    if ggml_type == Q.F16:
        return source.to(torch.float16).numpy()
    if ggml_type == Q.BF16:  # a bf16 source is copied bit for bit
        return source.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    return _quantize_by_rows(source, ggml_type)


def _quantize_by_rows(source: torch.Tensor, ggml_type: Q) -> np.ndarray:
    """gguf's numpy quantizer over a few rows at a time: blocks never span rows, so the result
    is the same as quantizing the whole tensor, without a float32 copy of all of it."""
    rows = source.reshape(-1, source.shape[-1])
    out = np.empty(gguf.quant_shape_to_byte_shape(rows.shape, ggml_type), dtype=np.uint8)
    step = max(1, CHUNK_BYTES // (4 * rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step].to(torch.float32).numpy()
        out[start:start + step] = gguf.quantize(chunk, ggml_type)
    return out
