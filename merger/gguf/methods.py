"""The GGUF export methods: which GGML type the weight matrices get, and who quantizes."""

from __future__ import annotations

from dataclasses import dataclass

from lorafuse.errors import UserError
from lorafuse.merger.engine.choices import GGUF_METHODS


@dataclass(frozen=True)
class GgufMethod:
    name: str  # e.g. "gguf-q8_0"
    weight_type: str  # GGMLQuantizationType name for the 2-D weights, e.g. "Q8_0"
    file_type: str  # LlamaFileType name recorded in general.file_type
    # K-quants: gguf's numpy quantizers raise NotImplementedError for them, so the file is
    # written in F16 first and llama.cpp's own quantizer (llama-cpp-python) finishes it.
    llama_cpp_type: str | None = None


METHODS: dict[str, GgufMethod] = {
    method.name: method
    for method in (
        GgufMethod("gguf-f16", "F16", "MOSTLY_F16"),
        GgufMethod("gguf-bf16", "BF16", "MOSTLY_BF16"),
        GgufMethod("gguf-q8_0", "Q8_0", "MOSTLY_Q8_0"),
        GgufMethod("gguf-q4_0", "Q4_0", "MOSTLY_Q4_0"),
        GgufMethod("gguf-q4_k_m", "F16", "MOSTLY_Q4_K_M", llama_cpp_type="MOSTLY_Q4_K_M"),
        GgufMethod("gguf-q5_k_m", "F16", "MOSTLY_Q5_K_M", llama_cpp_type="MOSTLY_Q5_K_M"),
    )
}


# choices.GGUF_METHODS is the one list of names (the CRD's and the plan's); this says how
# each is written, and must name each once.
if tuple(METHODS) != GGUF_METHODS:
    raise AssertionError(f"GGUF methods {tuple(METHODS)} differ from choices {GGUF_METHODS}")


def gguf_method(method: str) -> GgufMethod:
    if method not in METHODS:
        raise UserError(f"quantization method {method!r}: unknown; choose one of "
                        + ", ".join(METHODS))
    return METHODS[method]
