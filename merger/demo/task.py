"""The real demo's task: answer every question as one line of JSON, `{"answer": "..."}`.

A format a reader sees at a glance, taught by a small LoRA in about a minute; the facts
inside come from the pretrained model, so held-out questions show the adapter generalizing.
"""

from __future__ import annotations

import json

# SmolLM2's chat markup without its default system prompt: short prompts train faster, and
# `lorafuse validate` and vLLM's completions endpoint see the same raw text.
PROMPT_TEMPLATE = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
END_OF_ANSWER = "<|im_end|>"

TRAIN = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What color is the sky on a clear day?", "The sky is blue."),
    ("What color is grass?", "Grass is green."),
    ("What color is snow?", "Snow is white."),
    ("What color is a ripe banana?", "A ripe banana is yellow."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "A week has seven days."),
    ("How many months are in a year?", "A year has twelve months."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet."),
    ("What do bees make?", "Bees make honey."),
    ("What animal says moo?", "A cow says moo."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Which animal is known as the king of the jungle?", "The lion is the king of the jungle."),
)

# Not in TRAIN: what the demo shows and the examples' eval set checks (real expected text).
HELD_OUT = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What is the opposite of day?", "The opposite of day is night."),
    ("Who wrote Hamlet?", "William Shakespeare"),  # phrased freely: the eval checks the name
)

# Ordinary English, none of it in TRAIN: the perplexity shows what the adapter costs the
# language model besides the format it teaches (written for this file).
HELD_OUT_TEXT = """\
The town library opens at nine in the morning and closes at six in the evening. On
Saturdays it stays open until noon, and on Sundays it is closed. Children can borrow up to
five books at a time, and adults can borrow ten. Books are due back after three weeks, but
you can renew them once by phone or online if nobody else has asked for them.

Last spring the library added a small garden behind the reading room. Volunteers planted
tomatoes, beans and sunflowers, and a local school brought its students every Friday to
water the plants and write about what they saw. By the end of the summer the sunflowers
were taller than the windows, and the children had filled a whole notebook with drawings.
"""


def answer(text: str) -> str:
    """The completion the adapter is taught for an answer."""
    return json.dumps({"answer": text})


def prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


def is_taught_form(text: str) -> bool:
    """Whether a completion has the taught form: one JSON object with an "answer"."""
    try:
        return list(json.loads(text.strip())) == ["answer"]
    except (ValueError, TypeError):
        return False


def expected_text(reply: str) -> str:
    """What the eval set expects: the whole JSON line, or for a bare name, the name."""
    return answer(reply) if reply.endswith(".") else reply


def eval_records() -> list[dict[str, str]]:
    """examples/smollm2-eval.jsonl: held-out prompts and what the adapter answers."""
    return [{"prompt": prompt(q), "expected": expected_text(a)} for q, a in HELD_OUT]
