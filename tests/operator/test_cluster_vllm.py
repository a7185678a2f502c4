"""End to end with real vLLM (CPU): merged and adapter serving answer alike, greedily."""

from __future__ import annotations

import pytest

from tests.operator.cluster import (
    NAME,
    REAL_VLLM_IMAGE,
    ModelDeployments,
    post_json,
    ready_pod,
    real_vllm,
    register_images,
    tiny_spec,
    vllm_python,
)

pytestmark = pytest.mark.vllm

PROMPT = "Please reset my password. Where is my"


def _complete(control_plane, node, namespace: str, mode: str, model: str) -> str:
    pod = ready_pod(control_plane, namespace, NAME, mode)
    port = node.port_for(pod.metadata.name, 8000, namespace)
    request = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    return post_json(port, "/v1/completions", request)["choices"][0]["text"]


def test_merged_and_adapter_serving_give_the_same_greedy_completion(
    control_plane, namespace, node, models_claim, start_operator
):
    # The engine in the server's process starts faster on two cores.
    engine_env = {
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    register_images(node, real_vllm(str(vllm_python()), engine_env))
    start_operator()
    mdeps = ModelDeployments(control_plane, namespace)
    serving = {
        "image": REAL_VLLM_IMAGE,
        "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
        "maxLoraRank": 8,
        "probes": {"periodSeconds": 2},
        "extraArgs": ["--dtype", "float32", "--enforce-eager"],
    }
    mdeps.create(NAME, tiny_spec(serving=serving))
    mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") == "Serving" and s.get("servingMode") == "merged",
        300,
        "merged serving",
    )
    merged = _complete(control_plane, node, namespace, "merged", NAME)

    mdeps.patch_spec(NAME, {"serving": {"mode": "adapter"}})
    mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") == "Serving" and s.get("servingMode") == "adapter",
        300,
        "adapter serving",
    )
    adapter = _complete(control_plane, node, namespace, "adapter", NAME)
    base = _complete(control_plane, node, namespace, "adapter", f"{NAME}-base")

    assert merged.strip()
    assert adapter == merged
    assert base != merged  # the adapter changes the answer, so the equality above means something
