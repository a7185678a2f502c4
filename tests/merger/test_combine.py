"""Several adapters: linear sums and TIES/DARE on full task vectors, against PEFT's deltas."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils

from lorafuse.merger.engine.combine import tensor_seed
from tests.merger.helpers import assert_close, load_output, merge_cli, peft_merged


def peft_task_vectors(base_dir, adapters):
    """Each adapter's delta as PEFT merges it: merge_and_unload(adapter) - base."""
    base = load_output(base_dir)
    deltas = []
    for adapter in adapters:
        merged = peft_merged(base_dir, adapter)
        deltas.append({k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])})
    return base, deltas


@pytest.fixture(scope="module")
def two_adapters(tiny_base, tiny_adapter):
    base = tiny_base("llama")
    first = tiny_adapter(base, seed=11, target_modules=["q_proj", "v_proj", "up_proj"])
    second = tiny_adapter(base, seed=12, target_modules=["q_proj", "v_proj", "o_proj"], r=4)
    return base, [first, second]


def test_weighted_linear_sum_matches_peft_deltas(two_adapters, tmp_path):
    base_dir, adapters = two_adapters
    assert merge_cli(base_dir, adapters, tmp_path / "out", "--weights", "0.7,-0.4") == 0
    base, deltas = peft_task_vectors(base_dir, adapters)
    expected = dict(base)
    for weight, delta in zip((0.7, -0.4), deltas, strict=True):
        for key, value in delta.items():
            expected[key] = expected[key] + weight * value
    assert_close(load_output(tmp_path / "out"), expected)


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_ties_and_dare_match_merge_utils_on_peft_deltas(method, two_adapters, tmp_path):
    base_dir, adapters = two_adapters
    args = ("--weights", "1.0,0.5", "--combine", method, "--density", "0.4", "--seed", "3")
    assert merge_cli(base_dir, adapters, tmp_path / "out", *args) == 0
    base, deltas = peft_task_vectors(base_dir, adapters)
    expected = dict(base)
    for key in base:
        present = [(w, d[key]) for w, d in zip((1.0, 0.5), deltas, strict=True) if key in d]
        if not present:
            continue
        weights = torch.tensor([w for w, _ in present])
        vectors = [v for _, v in present]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(3, key))
            if method == "ties":
                combined = merge_utils.ties(vectors, weights, 0.4)
            else:
                combined = getattr(merge_utils, method)(vectors, weights, 0.4)
        expected[key] = base[key] + combined
    assert_close(load_output(tmp_path / "out"), expected, rtol=1e-4, atol=1e-5)


def test_dare_is_reproducible_with_the_same_seed(two_adapters, tmp_path):
    base_dir, adapters = two_adapters
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        args = ("--combine", "dare_linear", "--density", "0.5", "--seed", seed)
        assert merge_cli(base_dir, adapters, tmp_path / name, *args) == 0
        runs.append(load_output(tmp_path / name))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(runs[0][key], runs[1][key])
    assert not torch.equal(runs[0][key], runs[2][key])


def test_ties_needs_a_density(two_adapters, tmp_path, capsys):
    base_dir, adapters = two_adapters
    assert merge_cli(base_dir, adapters, tmp_path / "out", "--combine", "ties") == 2
    assert "--density" in capsys.readouterr().err


def test_weights_count_must_match_adapters(two_adapters, tmp_path, capsys):
    base_dir, adapters = two_adapters
    assert merge_cli(base_dir, adapters, tmp_path / "out", "--weights", "1.0") == 2
    assert "2 adapters" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
