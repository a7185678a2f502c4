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
