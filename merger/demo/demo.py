"""`lorafuse demo`: tiny model + adapter, merged, then compared with PEFT adapter-on-base."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PROMPTS = (
    "Please reset my password.",
    "Where is my order?",
    "Kubernetes schedules pods",
    "Low rank adaptation trains",
)
NEW_TOKENS = 12


@dataclass
class Comparison:
    prompt: str
    base_text: str
    adapter_text: str
    merged_text: str
    max_logit_diff: float

    @property
    def same_text(self) -> bool:
        return self.adapter_text == self.merged_text


def quiet_libraries() -> None:
    """The demo prints a table; transformers' progress bars and notices would bury it."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformers|peft")
    warnings.filterwarnings("ignore", category=FutureWarning)


def build_inputs(directory: Path) -> tuple[Path, Path]:
    """A tiny Llama-shaped base and a random LoRA on all its linear layers (kept if present)."""
    from lorafuse.merger.demo.tiny import build_adapter, build_tiny_model

    base, adapter = directory / "base", directory / "adapter"
    if not (base / "config.json").is_file():
        log.info("building a tiny base model in %s", base)
        # Two heads of 32: vLLM's CPU attention has no kernel for head_dim 16.
        build_tiny_model(base, arch="llama", seed=0, num_attention_heads=2, num_key_value_heads=1)
    if not (adapter / "adapter_config.json").is_file():
        log.info("building a random LoRA adapter in %s", adapter)
        build_adapter(base, adapter, seed=1, r=8, lora_alpha=16, target_modules="all-linear")
    return base, adapter


def _greedy(model, tokenizer, ids: torch.Tensor) -> tuple[str, torch.Tensor]:
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    # random weights emit partial UTF-8 sequences and control bytes: keep the table aligned
    return "".join(c if " " <= c <= "~" else "?" for c in text), logits


def compare(base: Path, adapter: Path, merged: Path, prompts=PROMPTS) -> list[Comparison]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                             adapter).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with with_adapter.disable_adapter():
            base_text, _ = _greedy(with_adapter, tokenizer, ids)
        adapter_text, adapter_logits = _greedy(with_adapter, tokenizer, ids)
        merged_text, merged_logits = _greedy(merged_model, tokenizer, ids)
        diff = float((adapter_logits - merged_logits).abs().max())
        rows.append(Comparison(prompt, base_text, adapter_text, merged_text, diff))
    return rows


def format_table(rows: list[Comparison]) -> str:
    def cell(text: str, width: int) -> str:
        text = text.replace("\n", " ")
        return (text if len(text) <= width else text[: width - 1] + "~").ljust(width)

    header = (f"{cell('prompt', 26)} | {cell('base alone', 20)} | "
              f"{cell('adapter on base = merged', 28)} | same | max |dlogit|")
    lines = [header, "-" * len(header)]
    for row in rows:
        text = row.merged_text if row.same_text else f"{row.adapter_text} != {row.merged_text}"
        lines.append(f"{cell(row.prompt, 26)} | {cell(row.base_text, 20)} | {cell(text, 28)} | "
                     f"{'yes' if row.same_text else 'NO':4} | {row.max_logit_diff:.2e}")
    return "\n".join(lines)
