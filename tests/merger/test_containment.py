"""Inputs stay inside their source: no '..', no absolute names, no links leading out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lorafuse.errors import UserError
from lorafuse.merger.pipeline.sources import resolve_source
from tests.merger.helpers import (
    assert_close,
    fails_cleanly,
    load_output,
    merge_cli,
    peft_merged,
)


@pytest.fixture
def inputs(tiny_base, tiny_adapter, tmp_path):
    """Private copies of a base and an adapter under tmp_path/src."""
    base = shutil.copytree(tiny_base("llama"), tmp_path / "src" / "base")
    source = tiny_adapter(tiny_base("llama"), target_modules=["q_proj", "v_proj"])
    adapter = shutil.copytree(source, tmp_path / "src" / "adapter")
    return base, adapter


@pytest.fixture
def claims(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "sources"
    (root / "models" / "llama").mkdir(parents=True)
    (root / "other" / "secret").mkdir(parents=True)
    monkeypatch.setenv("LORAFUSE_PVC_ROOT", str(root))
    return root


@pytest.mark.parametrize("source", ["pvc://models/../..", "pvc://models/llama/../../other",
                                    "/models/../x", "/models/llama/.."])
def test_a_source_path_with_dot_dot_is_refused(source, claims):
    with pytest.raises(UserError, match=r"'\.\.' is not allowed") as error:
        resolve_source(source)
    assert source in str(error.value)


@pytest.mark.parametrize("claim", ["Models", "models_v2", "a.b", "-models", "x" * 64, "..", "."])
def test_a_claim_name_that_is_not_a_dns_label_is_refused(claim, claims):
    with pytest.raises(UserError, match="not a DNS label") as error:
        resolve_source(f"pvc://{claim}/llama")
    assert claim in str(error.value)


def test_a_claim_folder_linking_out_of_its_claim_is_refused(claims):
    (claims / "models" / "escape").symlink_to(claims / "other" / "secret")
    with pytest.raises(UserError, match="leads outside its claim"):
        resolve_source("pvc://models/escape")


def write_index(base: Path, file_name: str) -> None:
    raw = (base / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    weight_map = {key: file_name for key in header if key != "__metadata__"}
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("entry_for", [
    lambda base: str(base / "model.safetensors"),  # absolute, even if it is the right file
    lambda base: "../base/model.safetensors",
    lambda base: "shards/../../base/model.safetensors",
])
def test_index_entry_absolute_or_with_dot_dot_is_refused(entry_for, inputs, tmp_path, capsys):
    base, adapter = inputs
    entry = entry_for(base)
    write_index(base, entry)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect=repr(entry),
                  names=base / "model.safetensors.index.json")


def test_base_shard_linking_outside_the_base_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    outside = tmp_path / "elsewhere.safetensors"
    (base / "model.safetensors").rename(outside)
    (base / "model.safetensors").symlink_to(outside)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="links outside",
                  names=base / "model.safetensors")


def test_adapter_weights_linking_outside_the_adapter_are_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    outside = tmp_path / "elsewhere.safetensors"
    (adapter / "adapter_model.safetensors").rename(outside)
    (adapter / "adapter_model.safetensors").symlink_to(outside)
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="links outside",
                  names=adapter / "adapter_model.safetensors")


def test_base_side_file_linking_to_the_environment_never_reaches_an_artifact(
        inputs, tmp_path, capsys, monkeypatch):
    base, adapter = inputs
    monkeypatch.setenv("HF_TOKEN", "hf_secret_that_must_not_leak")
    (base / "README.md").symlink_to("/proc/self/environ")
    fails_cleanly(capsys, base, [adapter], tmp_path / "out", expect="links outside",
                  names=base / "README.md")
    assert not any(tmp_path.glob("out*")) and not any(tmp_path.glob(".out*"))


def test_links_within_the_source_folder_are_followed(inputs, tmp_path):
    base, adapter = inputs
    (base / "weights").mkdir()
    (base / "model.safetensors").rename(base / "weights" / "model.safetensors")
    (base / "model.safetensors").symlink_to("weights/model.safetensors")
    assert merge_cli(base, [adapter], tmp_path / "out") == 0


def hub_cache_layout(folder: Path, cache: Path) -> Path:
    """folder's files as the Hugging Face cache holds them: snapshots/REV/x -> ../../blobs/H."""
    repo = cache / "models--org--name"
    snapshot = repo / "snapshots" / ("0123456789abcdef" * 3)[:40]
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"blob{index}"
        shutil.copy2(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_hugging_face_cache_snapshots_linking_to_their_blobs_merge(inputs, tmp_path):
    base, adapter = inputs
    expected = peft_merged(base, adapter)
    cached_base = hub_cache_layout(base, tmp_path / "hub")
    cached_adapter = hub_cache_layout(adapter, tmp_path / "hub-adapters")
    assert merge_cli(cached_base, [cached_adapter], tmp_path / "out") == 0
    assert_close(load_output(tmp_path / "out"), expected)


def test_a_snapshot_linking_to_another_repositorys_blobs_is_refused(inputs, tmp_path, capsys):
    base, adapter = inputs
    snapshot = hub_cache_layout(base, tmp_path / "hub")
    other = tmp_path / "hub" / "models--evil--repo" / "blobs"
    other.mkdir(parents=True)
    (other / "readme").write_text("not from this repository")
    (snapshot / "README.md").symlink_to(os.path.relpath(other / "readme", snapshot))
    fails_cleanly(capsys, snapshot, [adapter], tmp_path / "out", expect="links outside",
                  names=snapshot / "README.md")
