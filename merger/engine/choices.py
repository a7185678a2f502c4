"""The combine methods, output dtypes and quantization methods a merge accepts: one list
each, importing nothing."""

from __future__ import annotations

from typing import Literal, get_args

CombineMethod = Literal["linear", "ties", "dare_linear", "dare_ties"]
OutputDtype = Literal["auto", "bfloat16", "float16", "float32"]
# llm-compressor's (compressed-tensors, served by vLLM) and the GGUF exports (a file for
# llama.cpp and Ollama, for download); merger/gguf/methods.py says how each gguf-* is written.
QuantMethod = Literal[
    "none", "awq", "gptq", "fp8",
    "gguf-f16", "gguf-bf16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m", "gguf-q5_k_m",
]

COMBINE_METHODS: tuple[str, ...] = get_args(CombineMethod)
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)
QUANT_METHODS: tuple[str, ...] = get_args(QuantMethod)
GGUF_PREFIX = "gguf-"
GGUF_METHODS: tuple[str, ...] = tuple(m for m in QUANT_METHODS if m.startswith(GGUF_PREFIX))
# Written by llama.cpp's own quantizer (llama-cpp-python), which compiles llama.cpp.
GGUF_K_QUANTS: tuple[str, ...] = ("gguf-q4_k_m", "gguf-q5_k_m")
GGUF_FILE = "model.gguf"  # the model file of a gguf-* artifact (beside Modelfile, lorafuse.json)


def is_gguf(method: str | None) -> bool:
    """A GGUF export: one file for llama.cpp and Ollama, not a checkpoint vLLM serves."""
    return bool(method) and str(method).startswith(GGUF_PREFIX)
