"""Shared ModelDeployment examples for the operator's pure tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from lorafuse.operator.children import Owner
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
