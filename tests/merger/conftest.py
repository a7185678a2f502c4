"""Fixtures for merge tests: tiny bases and adapters (built once), the CLI, PEFT as the oracle."""

from __future__ import annotations

import json
import warnings
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
