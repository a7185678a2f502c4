"""Validation: a candidate (merged or quantized) against base + adapters run by PEFT.

Four numbers, all on the same prompts:
- task score: the fraction of prompts whose greedy output contains the expected text
  (case-insensitive, whitespace collapsed), for the reference and for the candidate;
- token agreement: along the reference's greedy text (prompt + continuation), the fraction
  of positions where both models would pick the same next token;
- mean KL(reference || candidate) of the next-token distributions at those positions (nats);
- max |logit difference| at those positions.

The candidate fails when its score falls more than `max_delta` below the reference's, and,
whatever the scores say (an eval set both models miss entirely scores 0 = 0), when it is
clearly broken: token agreement below `min_token_agreement` or mean KL above `max_mean_kl`.
The defaults (0.5 and 0.25 nats) pass FP8 and 4-bit quantization of real models, which stay
far above half the greedy tokens and far below a quarter nat, and catch a model with a
damaged layer or missing adapters, which does neither.
"""

from __future__ import annotations

import gc
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lorafuse.errors import UserError, first_line
from lorafuse.jsonl import read_records, text_field

log = logging.getLogger(__name__)

# Used when no eval set is given: there is no task score then, only agreement and KL.
NEUTRAL_PROMPTS = [
    "The quick brown fox",
    "Please summarize the following text:",
    "Question: what is two plus two? Answer:",
    "Once upon a time",
    "def main():",
]


@dataclass
class EvalItem:
    prompt: str
    expected: str | None = None


@dataclass
class Thresholds:
    max_delta: float = 0.01
    min_token_agreement: float = 0.5
    max_mean_kl: float = 0.25


@dataclass
class ItemResult:
    prompt: str
    expected: str | None
    reference_output: str
    candidate_output: str
    reference_found: bool | None
    candidate_found: bool | None


@dataclass
class ValidationReport:
    passed: bool
    score_candidate: float | None
    score_reference: float | None
    delta: float | None
    token_agreement: float | None
    mean_kl: float | None
    max_logit_diff: float | None
    reasons: list[str]  # why it failed; empty when it passed
    prompts: int
    positions: int
    thresholds: dict
    items: list[ItemResult] = field(default_factory=list)

    def summary(self) -> dict:
        """The fields the Job result and the operator's status carry."""
        keys = ("passed", "score_candidate", "score_reference", "delta", "token_agreement",
                "mean_kl", "max_logit_diff")
        return {key: getattr(self, key) for key in keys}

    def to_dict(self) -> dict:
        return asdict(self)


def load_eval(path: Path) -> list[EvalItem]:
    """An eval set: JSONL of {"prompt": ..., "expected": ...} lines."""
    path = Path(path)
    items = []
    for number, record in read_records(path, "eval"):
        prompt = text_field(path, number, record, ("prompt",))
        expected = text_field(path, number, record, ("expected",))
        items.append(EvalItem(prompt=prompt, expected=expected))
    return items


def validate(
    base: Path,
    adapters: list[Path],
    candidate: Path,
    items: list[EvalItem] | None = None,
    weights: list[float] | None = None,
    max_new_tokens: int = 50,
    thresholds: Thresholds | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> ValidationReport:
    """Score `candidate` against PEFT's base + adapters; one model in memory at a time."""
    thresholds = thresholds or Thresholds()
    items = items or [EvalItem(prompt) for prompt in NEUTRAL_PROMPTS]
    weights = weights or [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise UserError(f"{len(weights)} weights for {len(adapters)} adapters")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = _load_tokenizer(candidate)
    prompt_ids = [_encode(tokenizer, item.prompt) for item in items]

    reference = _load_reference(base, adapters, weights, device, dtype)
    ref_runs = [_reference_run(reference, ids, tokenizer, max_new_tokens) for ids in prompt_ids]
    _release(reference)

    model = _load_model(candidate, device, dtype, "candidate")
    totals = _Totals()
    results = []
    for item, ids, run in zip(items, prompt_ids, ref_runs, strict=True):
        candidate_text = _generate(model, ids, tokenizer, max_new_tokens)[1]
        totals.add(run.logits, _logits(model, run.sequence))
        results.append(_item_result(item, run.text, candidate_text))
    _release(model)
    return _report(results, totals, thresholds)


@dataclass
class _ReferenceRun:
    sequence: torch.Tensor  # prompt + greedy continuation, shape (1, L)
    text: str  # the continuation, decoded
    logits: torch.Tensor  # (L, vocab) next-token logits in float32, on the CPU


@dataclass
class _Totals:
    agree: int = 0
    positions: int = 0
    kl_sum: float = 0.0
    max_diff: float = 0.0

    def add(self, ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> None:
        if ref_logits.shape != cand_logits.shape:
            raise UserError(
                f"candidate vocabulary ({cand_logits.shape[-1]}) differs from the reference's "
                f"({ref_logits.shape[-1]})"
            )
        ref_logp = torch.log_softmax(ref_logits, dim=-1)
        cand_logp = torch.log_softmax(cand_logits, dim=-1)
        self.agree += int((ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum())
        self.positions += ref_logits.shape[0]
        self.kl_sum += float((ref_logp.exp() * (ref_logp - cand_logp)).sum(-1).clamp_min(0).sum())
        diff = float((ref_logits - cand_logits).abs().max())
        # max() keeps its first argument when compared with NaN: a NaN must stick instead
        if not math.isnan(self.max_diff) and not diff <= self.max_diff:
            self.max_diff = diff


def _gguf_file(candidate: Path) -> Path | None:
    """The GGUF file a candidate names: FILE.gguf, or a GGUF artifact dir (no config.json)."""
    candidate = Path(candidate)
    if candidate.suffix == ".gguf":
        if not candidate.is_file():
            raise UserError(f"{candidate}: GGUF file not found")
        return candidate
    files = sorted(candidate.glob("*.gguf")) if candidate.is_dir() else []
    if len(files) == 1 and not (candidate / "config.json").is_file():
        return files[0]
    return None


def _pretrained_args(model_dir: Path) -> tuple[Path, dict]:
    """from_pretrained's arguments: a GGUF is loaded (dequantized) from its folder by name."""
    gguf = _gguf_file(model_dir)
    return (gguf.parent, {"gguf_file": gguf.name}) if gguf else (Path(model_dir), {})


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        folder, extra = _pretrained_args(model_dir)
        return AutoTokenizer.from_pretrained(folder, **extra)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot load its tokenizer ({first_line(exc)})") from None


def _encode(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise UserError(f"prompt {prompt[:40]!r}: encodes to no tokens")
    return ids


def _load_model(model_dir: Path, device: str, dtype: torch.dtype, role: str):
    from transformers import AutoModelForCausalLM

    folder, extra = _pretrained_args(model_dir)
    if not extra and not (folder / "config.json").is_file():
        raise UserError(f"{model_dir}: {role} is not a model directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{model_dir}: cannot load the {role} ({first_line(exc)})") from None
    return model.to(device).eval()


def _load_reference(base: Path, adapters: list[Path], weights: list[float], device, dtype):
    """base + every adapter active at once, each scaled by its weight: the linear combination."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not adapters:
        raise UserError("validation needs at least one adapter for the reference")
    model = _load_model(base, "cpu", dtype, "base")
    names = [f"adapter{index}" for index in range(len(adapters))]
    for index, (name, path) in enumerate(zip(names, adapters, strict=True)):
        if not (Path(path) / "adapter_config.json").is_file():
            raise UserError(f"{path}: not a PEFT adapter (no adapter_config.json)")
        try:
            if index == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: PEFT cannot load this adapter ({first_line(exc)})") from None
    model.base_model.set_adapter(names)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, weight in zip(names, weights, strict=True):
                if name in module.scaling and weight != 1.0:
                    module.scaling[name] *= weight
    return model.to(device).eval()


@torch.no_grad()
def _generate(model, ids: torch.Tensor, tokenizer, max_new_tokens: int) -> tuple[torch.Tensor, str]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    sequence = model.generate(
        ids.to(device), attention_mask=torch.ones_like(ids).to(device), generation_config=config
    ).cpu()
    text = tokenizer.decode(sequence[0, ids.shape[1]:], skip_special_tokens=True)
    return sequence, text


@torch.no_grad()
def _logits(model, sequence: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(sequence.to(device)).logits[0].float().cpu()


def _reference_run(model, ids, tokenizer, max_new_tokens) -> _ReferenceRun:
    sequence, text = _generate(model, ids, tokenizer, max_new_tokens)
    return _ReferenceRun(sequence=sequence, text=text, logits=_logits(model, sequence))


def _release(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _item_result(item: EvalItem, reference_text: str, candidate_text: str) -> ItemResult:
    def found(text: str) -> bool | None:
        return None if item.expected is None else _normalize(item.expected) in _normalize(text)

    return ItemResult(
        prompt=item.prompt,
        expected=item.expected,
        reference_output=reference_text,
        candidate_output=candidate_text,
        reference_found=found(reference_text),
        candidate_found=found(candidate_text),
    )


def _finite_or_none(value: float | None) -> float | None:
    """Reports reach JSON and Kubernetes status, where NaN and Infinity are not numbers."""
    return value if value is not None and math.isfinite(value) else None


def _report(results: list[ItemResult], totals: _Totals, limits: Thresholds) -> ValidationReport:
    scored = [r for r in results if r.expected is not None]
    score_ref = score_cand = delta = None
    if scored:
        score_ref = sum(bool(r.reference_found) for r in scored) / len(scored)
        score_cand = sum(bool(r.candidate_found) for r in scored) / len(scored)
        delta = score_ref - score_cand
    agreement = totals.agree / totals.positions
    mean_kl = totals.kl_sum / totals.positions
    reasons = []
    if delta is not None and delta > limits.max_delta + 1e-9:
        reasons.append(
            f"task score fell by {delta:.3f} ({score_ref:.3f} -> {score_cand:.3f}), "
            f"more than max delta {limits.max_delta}"
        )
    if agreement < limits.min_token_agreement:
        reasons.append(
            f"greedy token agreement {agreement:.3f} is below {limits.min_token_agreement}"
        )
    if mean_kl > limits.max_mean_kl:
        reasons.append(f"mean KL {mean_kl:.4f} nats is above {limits.max_mean_kl}")
    metrics = {"score_candidate": score_cand, "score_reference": score_ref, "delta": delta,
               "token_agreement": agreement, "mean_kl": mean_kl,
               "max_logit_diff": totals.max_diff}
    reasons += [f"{name} is {value} (not a finite number)" for name, value in metrics.items()
                if value is not None and not math.isfinite(value)]
    metrics = {name: _finite_or_none(value) for name, value in metrics.items()}
    return ValidationReport(
        passed=not reasons,
        **metrics,
        reasons=reasons,
        prompts=len(results),
        positions=totals.positions,
        thresholds=asdict(limits),
        items=results,
    )
