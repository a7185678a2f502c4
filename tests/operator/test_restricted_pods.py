"""Every pod a ModelDeployment gets runs restricted, as the images' non-root user 10001."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["examples/demo-modeldeployment.yaml", "manifests/examples/adapter-mode.yaml"]


def pod_templates(manifest: str) -> list[dict]:
    """Pod specs of the Jobs and Deployments `lorafuse render` prints."""
    out = subprocess.run(
        [sys.executable, "-m", "lorafuse", "render", "--digest", "sha256:" + "0" * 64, manifest],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("manifest", EXAMPLES)
def test_pods_run_as_non_root_10001_with_fs_group_and_runtime_default_seccomp(manifest):
    pods = pod_templates(manifest)
    assert pods
    for pod in pods:
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,  # makes a root-owned volume writable for the pod
            "seccompProfile": {"type": "RuntimeDefault"},
        }


@pytest.mark.parametrize("manifest", EXAMPLES)
def test_containers_cannot_escalate_and_drop_every_capability(manifest):
    for pod in pod_templates(manifest):
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }, container["name"]


def test_the_example_namespace_enforces_the_restricted_profile():
    namespace = yaml.safe_load((REPO / "manifests/examples/namespace.yaml").read_text())
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("manifest", EXAMPLES)
def test_merge_steps_are_never_best_effort(manifest):
    for pod in pod_templates(manifest):
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["command"][:2] == ["lorafuse", "job"] and container["name"] != "verify":
                assert container["resources"].get("requests"), container["name"]


def test_every_example_that_creates_its_volume_shares_it_read_write_many():
    for path in sorted((REPO / "manifests/examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                doc
                and doc["kind"] == "ModelDeployment"
                and "existingClaim" not in doc["spec"].get("storage", {})
            ):
                assert doc["spec"]["storage"]["accessModes"] == ["ReadWriteMany"], path.name
