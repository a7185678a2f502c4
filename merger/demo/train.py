"""Train the real demo's LoRA (merger/demo/task.py) with PEFT, cheaply enough for 2 CPU cores.

Only the top layers get LoRA, so the frozen layers below see the same inputs every step:
their output is computed once and training runs just the top layers and the output head, on
the answer tokens alone. The saved adapter is an ordinary PEFT adapter of the whole model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorafuse.merger.demo import task

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainSettings:
    """What the demo trains; the defaults take about a minute on 2 idle cores."""

    trained_layers: int = 6  # the top layers that get LoRA (SmolLM2-135M has 30)
    rank: int = 8
    alpha: int = 16
    steps: int = 24
    batch_size: int = 12
    learning_rate: float = 2e-3
    seed: int = 0
    time_budget_s: float = 100.0  # a loaded machine stops early rather than run on


@dataclass
class Batch:
    hidden: torch.Tensor  # (n, length, hidden): input of the first trained layer
    positions: torch.Tensor  # (n, length) bool: where the next token is an answer token
    targets: torch.Tensor  # the answer tokens, in the order of positions.nonzero()


def _examples(tokenizer) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + answer for each TRAIN pair, and each prompt's length."""
    sequences, prompt_lengths = [], []
    for question, reply in task.TRAIN:
        prompt_ids = tokenizer(task.prompt(question)).input_ids
        full = tokenizer(task.prompt(question) + task.answer(reply) + task.END_OF_ANSWER).input_ids
        if full[: len(prompt_ids)] != prompt_ids:  # the answer must not merge into the prompt
            raise RuntimeError(f"prompt and answer tokens overlap for {question!r}")
        sequences.append(full)
        prompt_lengths.append(len(prompt_ids))
    return sequences, prompt_lengths


@torch.no_grad()
def _frozen_bottom(model, sequences, prompt_lengths, first_trained: int, pad_id: int) -> Batch:
    """Run the frozen layers once. Right padding needs no mask: causal attention never lets
    a real token see the padding after it."""
    length = max(map(len, sequences))
    ids = torch.full((len(sequences), length), pad_id)
    positions = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (sequence, start) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        positions[row, start - 1 : len(sequence) - 1] = True  # position t predicts token t+1
    hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states[first_trained]
    targets = ids[:, 1:][positions[:, :-1]]
    return Batch(hidden=hidden, positions=positions, targets=targets)


def _loss(causal_lm, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    out = causal_lm.model(inputs_embeds=batch.hidden[rows]).last_hidden_state
    positions = batch.positions[rows]
    logits = causal_lm.lm_head(out[positions])  # the answer tokens only: a 49k-word head
    return torch.nn.functional.cross_entropy(logits, _targets_for(batch, rows))


def _targets_for(batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """The targets of `rows`, in the row-major order in which `positions` picks logits."""
    counts = batch.positions[:, :-1].sum(dim=1)
    pieces = torch.split(batch.targets, counts.tolist())
    return torch.cat([pieces[int(row)] for row in rows])


def _progress(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="training the LoRA", unit="step", leave=False)


def train_adapter(base: Path, out: Path, settings: TrainSettings = TrainSettings()) -> dict:
    """Train the task's LoRA on `base`, save it in `out`; returns the loss curve and time."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    layers = model.model.layers
    first_trained = len(layers) - settings.trained_layers
    sequences, prompt_lengths = _examples(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = _frozen_bottom(model, sequences, prompt_lengths, first_trained, pad_id)

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                        target_modules=list(LINEAR_MODULES),
                        layers_to_transform=list(range(first_trained, len(layers))))
    lora = get_peft_model(model, config)
    causal_lm = lora.get_base_model()
    causal_lm.model.layers = torch.nn.ModuleList(layers[first_trained:])  # the top only
    trainable = [p for p in lora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 - step / settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    bar = _progress(settings.steps)
    lora.train()
    try:
        for _step in range(settings.steps):
            rows = torch.randperm(len(sequences), generator=generator)[: settings.batch_size]
            loss = _loss(causal_lm, batch, rows.sort().values)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if time.monotonic() - started > settings.time_budget_s:
                break
    finally:
        if bar is not None:
            bar.close()
        causal_lm.model.layers = layers  # the saved names are those of the whole model
    lora.save_pretrained(out)
    return {"losses": losses, "seconds": time.monotonic() - started, "steps": len(losses)}
