"""`lorafuse demo` builds, merges and shows the merged model matching adapter-on-base."""

from __future__ import annotations

import pytest

from lorafuse.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo") / "demo"
    return directory


def test_demo_reports_matching_greedy_text_and_tiny_logit_difference(demo_run, capsys):
    assert main(["demo", "--dir", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert "merged model matches adapter-on-base" in out
    table = [line for line in out.splitlines() if line.count(" | ") == 4][1:]
    assert len(table) == 4
    for row in table:
        same, diff = (cell.strip() for cell in row.split(" | ")[3:])
        assert same == "yes" and float(diff) < 1e-3
    for name in ("base/config.json", "adapter/adapter_config.json", "merged/lorafuse.json"):
        assert (demo_run / name).is_file()


def test_demo_run_again_reuses_its_models(demo_run, capsys):
    if not (demo_run / "merged").is_dir():
        assert main(["demo", "--dir", str(demo_run)]) == 0
    before = {p: p.stat().st_mtime_ns for p in demo_run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["demo", "--dir", str(demo_run)]) == 0
    assert "reused" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in demo_run.rglob("*") if p.is_file()} == before
