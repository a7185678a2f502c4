"""Helpers for the merge and pipeline tests: the CLI, PEFT as the oracle, model outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lorafuse.cli import main


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


def save_peft_merge(base: Path, adapter: Path, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    return out


def save_damaged(base: Path, merged: Path, out: Path, layer: int) -> Path:
    """W_base - delta for every linear weight of one layer: that layer's delta, sign flipped."""
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


def tree_state(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every path under `roots`: equal states mean nothing changed."""
    state = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.stat()
            state[str(path)] = (info.st_ino, info.st_mtime_ns, info.st_size)
    return state



def lorafuse_command(*args) -> list[str]:
    """The CLI as a separate process (for kill and PID-namespace tests)."""
    return [sys.executable, "-c", "import sys; from lorafuse.cli import main; sys.exit(main())",
            *map(str, args)]


def as_pid_one(command: list[str]) -> list[str]:
    """`command` as PID 1 of a new PID namespace, as a container's entrypoint runs."""
    return ["unshare", "--pid", "--fork", "--mount-proc", *command]


def namespace_init(unshare_pid: int, timeout: float = 30) -> int:
    """The host PID of the process that `unshare --fork` started (PID 1 inside)."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    while time.monotonic() < deadline:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError("unshare started no process")


def tree_digest(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def fails_cleanly(capsys, base, adapters, out, *extra, expect: str, names: Path) -> str:
    """Exit 2, a single stderr line containing `expect` and the file name, nothing at out."""
    before = tree_digest(base, *adapters) if base.exists() else {}
    capsys.readouterr()
    assert merge_cli(base, adapters, out, *extra) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("lorafuse merge: error: "), stderr
    assert expect in err[0] and str(names) in err[0], err[0]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.lorafuse-staging-*"))
    if before:
        assert tree_digest(base, *adapters) == before
    return err[0]


def edit_json(path: Path, **fields) -> None:
    """Set top-level fields of a JSON file (e.g. adapter_config.json)."""
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def rewrite_header(path: Path, edit) -> None:
    """Replace a safetensors file's header with `edit(header_dict)`, keeping the data bytes."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = edit(json.loads(raw[8:8 + length]))
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length:])


def first_key(path: Path, part: str) -> str:
    """The first tensor key of a safetensors file that contains `part`."""
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return next(key for key in sorted(header) if part in key)
