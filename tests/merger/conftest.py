"""Fixtures for merge tests: tiny bases and adapters (built once), the CLI, PEFT as the oracle."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorafuse.cli import main
from lorafuse.merger.tiny import build_adapter, build_tiny_model


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


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def merge_cli(base: Path, adapters: list[Path], out: Path, *extra: str) -> int:
    args: list[str | Path] = ["merge", "--base", base, "--out", out]
    for adapter in adapters:
        args += ["--adapter", adapter]
    return run_cli(*args, *extra)


def load_output(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors





def peft_merged(base: Path, adapter: Path, dtype: torch.dtype = torch.float32
                ) -> dict[str, torch.Tensor]:
    """The oracle: PEFT's merge_and_unload() of one adapter, as a state dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def peft_logits(base: Path, adapter: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Adapter-on-base logits (PEFT, not merged): what a merge must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids).logits


def model_logits(directory: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(directory)
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids).logits


def assert_close(ours: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor],
                 rtol: float = 1e-5, atol: float = 1e-6) -> None:
    missing = sorted(set(ours) - set(oracle))
    assert not missing, f"tensors not in the oracle: {missing}"
    for name, tensor in ours.items():
        expected = oracle[name]
        assert tensor.shape == expected.shape, name
        assert tensor.dtype == expected.dtype, name
        torch.testing.assert_close(tensor, expected, rtol=rtol, atol=atol, msg=name)


def changed_keys(ours: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in ours.items() if k not in base or not torch.equal(v, base[k])}


def perturb_adapter(adapter: Path, target: Path, match: str, seed: int = 7,
                    scale: float = 0.5) -> Path:
    """Copy an adapter and add noise to tensors whose key contains `match` (PEFT saves
    modules_to_save and trainable tokens as copies of the base: a no-op until trained)."""
    import shutil

    shutil.copytree(adapter, target)
    path = target / "adapter_model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for key, value in tensors.items():
        if match in key:
            tensors[key] = value + scale * torch.randn(value.shape, generator=generator)
            hits += 1
    assert hits, f"no tensor matches {match!r}"
    save_file(tensors, path, metadata={"format": "pt"})
    return target


def output_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


class Helpers:
    """The helpers above as the `h` fixture (importlib mode cannot import conftest)."""

    run_cli = staticmethod(run_cli)
    merge_cli = staticmethod(merge_cli)
    load_output = staticmethod(load_output)
    peft_merged = staticmethod(peft_merged)
    peft_logits = staticmethod(peft_logits)
    model_logits = staticmethod(model_logits)
    assert_close = staticmethod(assert_close)
    changed_keys = staticmethod(changed_keys)
    perturb_adapter = staticmethod(perturb_adapter)
    output_config = staticmethod(output_config)


@pytest.fixture(scope="session")
def h() -> type[Helpers]:
    return Helpers


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
    from lorafuse.merger.demo import build_inputs
    from lorafuse.merger.engine import MergeOptions, merge

    root = tmp_path_factory.mktemp("pipeline-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, adapter = build_inputs(root)  # what `lorafuse demo` builds
        merged = merge(MergeOptions(base=base, adapters=[adapter], out=root / "merged")).out
        peft_dir = _save_peft_merge(base, adapter, root / "peft-merged")
        damaged = _save_damaged(base, peft_dir, root / "damaged", layer=0)
    return PipelineModels(base, adapter, merged, peft_dir, damaged)


def _save_peft_merge(base: Path, adapter: Path, out: Path) -> Path:
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    return out


def _save_damaged(base: Path, merged: Path, out: Path, layer: int) -> Path:
    """W_base - delta for every linear weight of one layer: that layer's delta, sign flipped."""
    import shutil

    shutil.copytree(merged, out)
    path = out / "model.safetensors"
    tensors, original = load_file(path), load_output(base)
    prefix = f"model.layers.{layer}."
    flipped = [k for k in tensors if k.startswith(prefix) and k.endswith("proj.weight")]
    assert flipped
    for key in flipped:
        tensors[key] = 2 * original[key] - tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})
    return out


def greedy_text(model_dir: Path, prompt: str, max_new_tokens: int, adapter: Path | None = None):
    """What a model (or base + adapter with PEFT) answers greedily, decoded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.eval().generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


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


def tree_state(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every path under `roots`: equal states mean nothing changed."""
    state = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.stat()
            state[str(path)] = (info.st_ino, info.st_mtime_ns, info.st_size)
    return state


@pytest.fixture(scope="session")
def pipe():
    """greedy_text and tree_state as a fixture (importlib mode cannot import conftest)."""

    class PipelineHelpers:
        greedy_text = staticmethod(greedy_text)
        tree_state = staticmethod(tree_state)

    return PipelineHelpers
