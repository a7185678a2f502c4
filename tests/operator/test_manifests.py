"""Plain manifests: generated from the chart and `lorafuse crd`, never stale, kustomize-able."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorafuse.operator.spec import ModelDeployment

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
GENERATOR = REPO / "scripts" / "generate-manifests.py"
EXAMPLES = [
    p
    for p in sorted((MANIFESTS / "examples").glob("*.yaml"))
    if "kind: ModelDeployment" in p.read_text()
]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The generated files, regenerated from the current sources into a temp dir."""
    out = tmp_path_factory.mktemp("generated")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True)
    return out


def generated_paths(root: Path) -> set[Path]:
    paths = {
        p.relative_to(root)
        for p in (root / "manifests").rglob("*")
        if p.is_file() and p.relative_to(root / "manifests").parts[0] != "examples"
    }
    chart = Path("charts/lorafuse")
    return paths | {chart / "Chart.yaml", chart / "crds/crds.yaml", chart / "files/rbac-rules.yaml"}


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_generated_files_are_not_stale(fresh):
    expected, present = generated_paths(fresh), generated_paths(REPO)
    assert present == expected, "run scripts/generate-manifests.py"
    stale = [str(p) for p in expected if not filecmp.cmp(fresh / p, REPO / p, shallow=False)]
    assert not stale, f"stale (run scripts/generate-manifests.py): {stale}"


def test_manifest_crds_are_lorafuse_crd_output():
    printed = subprocess.run(
        [sys.executable, "-m", "lorafuse", "crd"], capture_output=True, text=True, check=True
    ).stdout
    assert (MANIFESTS / "crd" / "crds.yaml").read_text() == printed


def test_kustomize_builds_the_whole_install():
    objects = kustomize(MANIFESTS)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("CustomResourceDefinition", "modeldeployments.lorafuse.dev"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("Namespace", "lorafuse-system"),
        ("ServiceAccount", "lorafuse"),
        ("ClusterRole", "lorafuse"),
        ("ClusterRoleBinding", "lorafuse"),
        ("Deployment", "lorafuse"),
        ("Service", "lorafuse-metrics"),
        ("ClusterKopfPeering", "lorafuse"),
    } <= names


def test_namespaced_objects_live_in_the_operator_namespace():
    for obj in kustomize(MANIFESTS):
        if obj["kind"] in ("ServiceAccount", "Deployment", "Service"):
            assert obj["metadata"]["namespace"] == "lorafuse-system", obj["kind"]


def test_plain_manifests_carry_no_helm_labels():
    for obj in kustomize(MANIFESTS):
        labels = obj["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels and labels.get("app.kubernetes.io/managed-by") != (
            "Helm"
        ), obj["kind"]


def test_kustomize_builds_the_examples():
    kinds = [o["kind"] for o in kustomize(MANIFESTS / "examples")]
    assert kinds.count("ModelDeployment") == len(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_a_valid_model_deployment(example):
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    (resource,) = [d for d in docs if d["kind"] == "ModelDeployment"]
    ModelDeployment.model_validate(resource)


def test_examples_cover_merged_awq_and_adapter_mode():
    specs = [
        ModelDeployment.model_validate(d).spec
        for p in EXAMPLES
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "ModelDeployment"
    ]
    assert any(s.serving.mode == "merged" and s.quantization.method == "awq" for s in specs)
    assert any(s.serving.mode == "adapter" for s in specs)
