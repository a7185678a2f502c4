"""`lorafuse validate`: PEFT's base + adapter against a candidate; passes good merges, fails bad."""

import json

import pytest

from lorafuse.cli import main


def validate_cli(models, candidate, *extra):
    args = ["validate", "--base", models.base, "--adapter", models.adapter,
            "--candidate", candidate, "--max-new-tokens", "8", *extra]
    return main([str(a) for a in args])


def test_correct_merge_passes_with_identical_greedy_output(pipeline_models, eval_file, tmp_path):
    report_path = tmp_path / "report.json"
    rc = validate_cli(pipeline_models, pipeline_models.peft_merged, "--eval", eval_file,
                      "--report", report_path)
    report = json.loads(report_path.read_text())
    assert rc == 0
    assert report["passed"] is True
    assert report["score_reference"] == report["score_candidate"] == 1.0
    assert report["token_agreement"] == 1.0
    assert report["mean_kl"] < 1e-6
    assert report["max_logit_diff"] < 1e-4


def test_damaged_merge_fails_with_exit_3(pipeline_models, eval_file, capsys):
    rc = validate_cli(pipeline_models, pipeline_models.damaged, "--eval", eval_file)
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert rc == 3
    assert report["passed"] is False
    assert report["delta"] > 0.01
    assert "task score fell" in err


def test_broken_candidate_fails_when_no_model_finds_the_expected_texts(
    pipeline_models, tmp_path, capsys
):
    unreachable = tmp_path / "eval.jsonl"
    unreachable.write_text(json.dumps({"prompt": "Hello world.", "expected": "zebra"}) + "\n")
    rc = validate_cli(pipeline_models, pipeline_models.damaged, "--eval", unreachable)
    report = json.loads(capsys.readouterr().out)
    assert report["score_reference"] == report["score_candidate"] == 0.0
    assert rc == 3
    assert any("agreement" in r or "KL" in r for r in report["reasons"])


def test_correct_merge_passes_without_an_eval_set(pipeline_models, capsys):
    rc = validate_cli(pipeline_models, pipeline_models.merged)
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["score_candidate"] is None
    assert report["token_agreement"] == 1.0


def test_weighted_adapters_are_checked_against_their_linear_combination(
    pipeline_models, tiny_adapter, tmp_path, capsys
):
    from lorafuse.merger.engine.merge import MergeOptions, merge

    second = tiny_adapter(pipeline_models.base, seed=5, target_modules=["q_proj", "v_proj"])
    weights = [1.0, -0.7]
    merged = merge(MergeOptions(base=pipeline_models.base, adapters=[pipeline_models.adapter,
                                second], out=tmp_path / "two", weights=weights)).out
    args = ["validate", "--base", pipeline_models.base, "--adapter", pipeline_models.adapter,
            "--adapter", second, "--weights", "1.0,-0.7", "--candidate", merged,
            "--max-new-tokens", "8"]
    rc = main([str(a) for a in args])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["mean_kl"] < 1e-6


@pytest.mark.parametrize(
    ("line", "problem"),
    [('{"prompt": "hi"', "not valid JSON"), ('{"prompt": "hi"}', "missing 'expected'"),
     ('["hi", "there"]', "expected a JSON object"), ('{"prompt": "", "expected": "x"}',
                                                     "non-empty string")],
)
def test_malformed_eval_line_is_named_and_exits_2(pipeline_models, tmp_path, capsys, line,
                                                  problem):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"prompt": "a", "expected": "b"}\n\n' + line + "\n")
    rc = validate_cli(pipeline_models, pipeline_models.merged, "--eval", path)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert f"{path}:3: " in err and problem in err


def strict_json(text: str) -> dict:
    """JSON as Kubernetes reads it: NaN and Infinity are not numbers."""
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in a report")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_fail_validation_with_the_reason():
    from lorafuse.merger.pipeline.validate import Thresholds, _report, _Totals

    totals = _Totals(agree=3, positions=4, kl_sum=float("nan"), max_diff=float("inf"))
    report = _report([], totals, Thresholds())
    assert report.passed is False
    assert any("mean_kl is nan" in reason for reason in report.reasons)
    assert any("max_logit_diff is inf" in reason for reason in report.reasons)
    strict_json(json.dumps(report.to_dict()))


def test_a_nan_logit_difference_is_not_lost_by_max():
    import torch

    from lorafuse.merger.pipeline.validate import _Totals

    totals = _Totals()
    reference = torch.zeros(2, 5)
    totals.add(reference, torch.tensor([[0.0, 0, 0, 0, float("nan")], [0.0, 0, 0, 0, 0]]))
    totals.add(reference, reference)
    assert totals.max_diff != totals.max_diff  # NaN


def test_candidate_with_nan_weights_fails_with_exit_3_and_a_finite_report(
    pipeline_models, tmp_path, capsys
):
    import shutil

    from safetensors.torch import load_file, save_file

    candidate = shutil.copytree(pipeline_models.peft_merged, tmp_path / "nan")
    path = candidate / "model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("norm.weight"))
    tensors[key][0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    report_path = tmp_path / "report.json"
    rc = validate_cli(pipeline_models, candidate, "--report", report_path)
    err = capsys.readouterr().err
    assert rc == 3
    assert "not a finite number" in err
    report = strict_json(report_path.read_text())
    assert report["passed"] is False
