"""Fixtures for merge tests: tiny bases and adapters (built once), the CLI, PEFT as the oracle."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from lorafuse.merger.demo.tiny import build_adapter, build_tiny_model
from tests.merger.helpers import greedy_text, save_damaged, save_peft_merge


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def get(kind: str, builder, *args, **kwargs) -> Path:
        key = json.dumps([kind, args, kwargs], sort_keys=True, default=str)
        if key not in built:
            target = root / f"{kind}-{len(built)}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built[key] = builder(*args, target, **kwargs) if args else builder(target, **kwargs)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_base(model_cache):
    """tiny_base(arch, **config_overrides) -> a float32 base model directory (cached)."""

    def make(arch: str = "llama", **overrides) -> Path:
        return model_cache("base", build_tiny_model, arch=arch, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_adapter(model_cache):
    """tiny_adapter(base_dir, seed=1, **LoraConfig kwargs) -> adapter directory (cached)."""

    def make(base: Path, seed: int = 1, **lora_kwargs) -> Path:
        return model_cache("adapter", _build_adapter_at, base, seed=seed, **lora_kwargs)

    return make


def _build_adapter_at(base: Path, target: Path, **kwargs) -> Path:
    return build_adapter(base, target, **kwargs)


@pytest.fixture(scope="session")
def medium_model(model_cache):
    """A ~150 MB float32 Llama-shaped base with a LoRA on every linear layer (for streaming,
    memory and kill tests): large next to its largest tensor (~3 MB)."""
    base = model_cache("base", build_tiny_model, arch="llama", hidden_size=512,
                       intermediate_size=1408, num_hidden_layers=12, num_attention_heads=8,
                       num_key_value_heads=8)
    adapter = model_cache("adapter", _build_adapter_at, base, seed=5, target_modules="all-linear",
                          r=16)
    return base, adapter


# --- quantize / validate / job / run ------------------------------------------------------


@dataclass
class PipelineModels:
    """A vLLM-servable tiny base (head_dim 32), a LoRA on all its linear layers, the merge."""

    base: Path
    adapter: Path
    merged: Path  # by the merge engine, with lorafuse.json
    peft_merged: Path  # by PEFT's merge_and_unload(): the independent oracle
    damaged: Path  # the PEFT merge with layer 0's deltas subtracted instead of added


@pytest.fixture(scope="session")
def pipeline_models(tmp_path_factory) -> PipelineModels:
    from lorafuse.merger.demo.demo import build_inputs
    from lorafuse.merger.engine.merge import MergeOptions, merge

    root = tmp_path_factory.mktemp("pipeline-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, adapter = build_inputs(root)  # what `lorafuse demo` builds
        merged = merge(MergeOptions(base=base, adapters=[adapter], out=root / "merged")).out
        peft_dir = save_peft_merge(base, adapter, root / "peft-merged")
        damaged = save_damaged(base, peft_dir, root / "damaged", layer=0)
    return PipelineModels(base, adapter, merged, peft_dir, damaged)


EVAL_PROMPTS = ("Where is my order?", "Low rank adaptation trains", "Hello world.")


@pytest.fixture(scope="session")
def eval_file(pipeline_models, tmp_path_factory) -> Path:
    """An eval set whose expected texts are what PEFT's base + adapter answers (8 tokens)."""
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    lines = [
        json.dumps({"prompt": p, "expected": greedy_text(pipeline_models.base, p, 8,
                                                         adapter=pipeline_models.adapter)})
        for p in EVAL_PROMPTS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def calibration_file() -> Path:
    return Path(__file__).parents[2] / "examples" / "demo-calibration.jsonl"


