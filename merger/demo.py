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
    adapter_text: str
    merged_text: str
    max_logit_diff: float

    @property
    def same_text(self) -> bool:
        return self.adapter_text == self.merged_text


def build_inputs(directory: Path) -> tuple[Path, Path]:
    """A tiny Llama-shaped base and a random LoRA on all its linear layers (kept if present)."""
    from lorafuse.merger.tiny import build_adapter, build_tiny_model

    base, adapter = directory / "base", directory / "adapter"
    if not (base / "config.json").is_file():
        log.info("building a tiny base model in %s", base)
        # Two heads of 32: vLLM's CPU attention has no kernel for head_dim 16.
        build_tiny_model(base, arch="llama", seed=0, num_attention_heads=2, num_key_value_heads=1)
    if not (adapter / "adapter_config.json").is_file():
        log.info("building a random LoRA adapter in %s", adapter)
        build_adapter(base, adapter, seed=1, r=8, lora_alpha=16, target_modules="all-linear")
    return base, adapter


def compare(base: Path, adapter: Path, merged: Path, prompts=PROMPTS) -> list[Comparison]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                                 adapter).eval()
        merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        texts, logits = [], []
        for model in (with_adapter, merged_model):
            with torch.no_grad():
                logits.append(model(input_ids=ids).logits)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=NEW_TOKENS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        diff = float((logits[0] - logits[1]).abs().max())
        rows.append(Comparison(prompt, texts[0], texts[1], diff))
    return rows


def format_table(rows: list[Comparison]) -> str:
    def cell(text: str, width: int) -> str:
        text = text.replace("\n", " ")
        return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)

    header = f"{cell('prompt', 28)} | {cell('greedy text (adapter on base = merged)', 40)} | " \
             f"same | max |Δlogit|"
    lines = [header, "-" * len(header)]
    for row in rows:
        text = row.merged_text if row.same_text else f"{row.adapter_text} ≠ {row.merged_text}"
        lines.append(f"{cell(row.prompt, 28)} | {cell(text, 40)} | "
                     f"{'yes' if row.same_text else 'NO':4} | {row.max_logit_diff:.2e}")
    return "\n".join(lines)
