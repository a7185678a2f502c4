"""Shared ModelDeployment examples for the operator's pure tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lorafuse.operator.children.common import Owner
from lorafuse.operator.spec import ModelDeploymentSpec

SPEC: dict[str, Any] = {
    "base": {"source": "hf://acme/tiny-llama", "revision": "0123abc"},
    "adapters": [{"name": "support-v3", "source": "pvc://adapters/support-v3"}],
    "serving": {"maxModelLen": 2048, "maxNumSeqs": 16},
}


@pytest.fixture
def raw_spec() -> dict[str, Any]:
    return copy.deepcopy(SPEC)


@pytest.fixture
def spec(raw_spec: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(raw_spec)


@pytest.fixture
def owner() -> Owner:
    return Owner("support-bot", "llm", "uid-1234")


# --- cluster tests (the harness's control_plane / namespace / node fixtures) ---------------


@pytest.fixture(scope="session")
def crds(control_plane):
    from tests.operator.cluster import install_crds

    install_crds(control_plane)


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory):
    """A tiny base model and one adapter for it, laid out as on the model volume."""
    from lorafuse.merger.demo.tiny import build_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("model-volume")
    # head_dim 32: vLLM's CPU attention has no kernel for the default 16
    base = build_tiny_model(root / "base", arch="llama", head_dim=32)
    build_adapter(base, root / "adapters" / "support", seed=1)
    return root


@pytest.fixture
def models_claim(control_plane, namespace, node, tiny_sources) -> str:
    """A PersistentVolumeClaim `models` holding /models/base and /models/adapters/support."""
    import shutil

    import kubernetes

    core = kubernetes.client.CoreV1Api(control_plane.client)
    claim = {
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)
    shutil.copytree(tiny_sources, node.claim_dir(namespace, "models"), dirs_exist_ok=True)
    return "models"


@pytest.fixture
def mdeps(control_plane, namespace, node, models_claim):
    """ModelDeployments of this test's namespace, its images registered on the node."""
    from tests.operator.cluster import ModelDeployments, register_images

    register_images(node)
    return ModelDeployments(control_plane, namespace)


@pytest.fixture
def operator_kubeconfig(control_plane, namespace, crds, tmp_path):
    from tests.operator.cluster import service_account_kubeconfig

    return service_account_kubeconfig(control_plane, namespace, tmp_path / "operator.kubeconfig")


@pytest.fixture
def start_operator(operator_kubeconfig, namespace, tmp_path):
    """Starts `lorafuse operator` replicas as the operator's ServiceAccount; stops them after."""
    from tests.operator.cluster import OperatorProcess

    started = []

    def start(priority: int = 100, extra_args: tuple[str, ...] = ()):
        process = OperatorProcess(operator_kubeconfig, namespace, tmp_path, priority, extra_args)
        started.append(process)
        return started[-1]

    yield start
    for process in started:
        process.stop()
        # pytest shows this only when the test failed
        print(f"--- {process.log} (tail) ---\n{process.output()[-6000:]}")
