"""Sources: local paths, pvc:// claims under the mount root, hf:// through the Hub cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lorafuse.errors import UserError
from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.merger.pipeline.sources import resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_local_directory_resolves_to_itself(tmp_path):
    resolved = resolve_source(str(tmp_path))
    assert resolved.path == str(tmp_path)
    assert resolved.commit is None


def test_a_missing_local_directory_is_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        resolve_source(str(tmp_path / "missing"))


def test_a_pvc_source_resolves_under_the_claim_mount(tmp_path, monkeypatch):
    (tmp_path / "adapters" / "support" / "v3").mkdir(parents=True)
    monkeypatch.setenv("LORAFUSE_PVC_ROOT", str(tmp_path))
    resolved = resolve_source("pvc://adapters/support/v3")
    assert resolved.path == str(tmp_path / "adapters" / "support" / "v3")


def test_pvc_claims_are_mounted_where_the_operator_mounts_them(monkeypatch):
    monkeypatch.delenv("LORAFUSE_PVC_ROOT", raising=False)
    with pytest.raises(UserError, match=r"\(/sources/models/llama\)"):
        resolve_source("pvc://models/llama")


def hub_cache(root, repo, files_from, ref="v1"):
    """A Hugging Face cache holding `repo` at COMMIT, with `ref` pointing at it."""
    storage = root / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files_from, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / ref).write_text(COMMIT)
    return root


def fetch_in_subprocess(plan, tmp_path, hf_home, offline: bool):
    """`lorafuse job fetch` in a fresh interpreter (the Hub client reads its env on import)."""
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan_file.write_text(plan.model_dump_json())
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "lorafuse", "job", "fetch", "--plan", str(plan_file),
         "--result-file", str(result_file)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    return done, json.loads(result_file.read_text())


def hub_plan(pipeline_models, tmp_path, base):
    return MergePlan(base=base, adapters=[{"name": "a", "source": str(pipeline_models.adapter)}],
                     artifact_root=str(tmp_path / "artifacts"))


def test_hf_source_without_network_is_one_line_of_bad_input(pipeline_models, tmp_path):
    plan = hub_plan(pipeline_models, tmp_path, "hf://acme/tiny-llama@v1")
    done, result = fetch_in_subprocess(plan, tmp_path, tmp_path / "empty-hf-home", offline=False)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2, done.stderr
    assert errors == ["lorafuse job: error: hf://acme/tiny-llama@v1: the Hugging Face Hub cannot "
                      "be reached (offline?) and the revision is not (completely) in the local "
                      "cache"]
    assert result["reason"] == "InvalidInput"
    assert not list((tmp_path / "work").glob("*/sources.json"))


def test_hf_source_pins_the_commit_its_revision_resolves_to(pipeline_models, tmp_path):
    hf_home = hub_cache(tmp_path / "hf", "acme/tiny-llama", pipeline_models.base)
    plan = hub_plan(pipeline_models, tmp_path, "hf://acme/tiny-llama@v1")
    done, result = fetch_in_subprocess(plan, tmp_path, hf_home, offline=True)
    sources = json.loads(next((tmp_path / "work").glob("*/sources.json")).read_text())
    assert done.returncode == 0, done.stderr
    assert result["ok"] is True
    assert sources["base"]["revision"] == "v1"
    assert sources["base"]["commit"] == COMMIT
    assert sources["base"]["path"].endswith(f"snapshots/{COMMIT}")


@pytest.mark.parametrize("source", ["hf://just-a-name", "hf://a/b/c@main"])
def test_a_malformed_hub_id_is_bad_input(source):
    with pytest.raises(UserError, match="expected hf://org/name@revision"):
        resolve_source(source)


def test_the_fetch_result_names_the_commit_of_each_hub_source(pipeline_models, tmp_path):
    hf_home = hub_cache(tmp_path / "hf", "acme/tiny-llama", pipeline_models.base)
    plan = hub_plan(pipeline_models, tmp_path, "hf://acme/tiny-llama@v1")
    done, result = fetch_in_subprocess(plan, tmp_path, hf_home, offline=True)
    assert done.returncode == 0, done.stderr
    # The operator pins adapter serving to these; local sources have no commit.
    assert result["sources"] == [{"source": "hf://acme/tiny-llama@v1", "commit": COMMIT}]
    done, again = fetch_in_subprocess(plan, tmp_path, hf_home, offline=True)  # step skipped
    assert again["sources"] == result["sources"]
