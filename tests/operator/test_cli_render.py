"""`lorafuse render`: the children of a manifest, without a cluster; bad input is one line."""

from __future__ import annotations

import subprocess
import sys

import yaml

from lorafuse.cli import main

MANIFEST = """
apiVersion: lorafuse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: support-bot, namespace: llm}
spec:
  base: {source: /models/base}
  adapters: [{name: support-v3, source: /models/adapters/support-v3}]
  serving: {mode: MODE, maxModelLen: 4096, maxNumSeqs: 8}
"""


def _render(tmp_path, capsys, mode: str) -> list[dict]:
    path = tmp_path / "mdep.yaml"
    path.write_text(MANIFEST.replace("MODE", mode))
    assert main(["render", str(path)]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_merged_manifest_renders_claim_plan_job_deployment_service(tmp_path, capsys):
    docs = _render(tmp_path, capsys, "merged")
    assert [d["kind"] for d in docs] == [
        "PersistentVolumeClaim",
        "ConfigMap",
        "Job",
        "Deployment",
        "Service",
    ]
    assert all(d["metadata"]["namespace"] == "llm" for d in docs)
    args = docs[3]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "4096"


def test_adapter_manifest_renders_no_merge(tmp_path, capsys):
    docs = _render(tmp_path, capsys, "adapter")
    kinds = ["PersistentVolumeClaim", "ConfigMap", "Deployment", "Service"]
    assert [d["kind"] for d in docs] == kinds  # the ConfigMap: the adapters vLLM starts with
    assert "--enable-lora" in docs[2]["spec"]["template"]["spec"]["containers"][0]["args"]


def _run_cli(*args: str, stdin: str = "", cwd: str = "/") -> subprocess.CompletedProcess:
    # Not from the repository root: its operator/ folder would shadow the stdlib module.
    return subprocess.run(
        [sys.executable, "-c", "from lorafuse.cli import main; raise SystemExit(main())", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_invalid_spec_exits_2_with_one_line_naming_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(MANIFEST.replace("MODE", "both"))
    proc = _run_cli("render", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "spec.serving.mode" in lines[0]


def test_missing_file_exits_2_with_one_line(tmp_path):
    proc = _run_cli("render", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.yaml" in proc.stderr


def test_broken_yaml_exits_2_with_one_line():
    proc = _run_cli("render", "-", stdin="spec: [unclosed")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "<stdin>" in proc.stderr
