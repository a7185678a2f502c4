"""Adapter serving pinned to commits, on the real control plane: the merge Job's fetch
resolves hf:// branches (from a Hugging Face cache on the model volume, offline), and the
adapter-mode fallback after its failed validation fetches exactly those commits."""

from __future__ import annotations

from tests.operator.cluster import (
    ADAPTER_COMMIT,
    BASE_COMMIT,
    NAME,
    REJECTED_VALIDATION,
    offline_hub,
    serving_pinned_deployment,
    tiny_spec,
)


def test_the_adapter_fallback_fetches_the_commits_the_merge_job_resolved(
    control_plane, namespace, node, mdeps, tiny_sources, start_operator
):
    offline_hub(node, namespace, tiny_sources)
    start_operator()
    spec = tiny_spec(
        base={"source": "hf://acme/tiny", "revision": "main"},
        adapters=[{"name": "support", "source": "hf://acme/support@main"}],
        dtype="bfloat16",
        validation=REJECTED_VALIDATION,
        job={"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
    )
    mdeps.create(NAME, spec)

    status = mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") == "RolledBack" and s.get("servingMode") == "adapter",
        180,
        "the adapter fallback",
    )
    assert status["resolvedSources"] == [
        {"source": "hf://acme/tiny@main", "commit": BASE_COMMIT},
        {"source": "hf://acme/support@main", "commit": ADAPTER_COMMIT},
    ]
    serving_pinned_deployment(control_plane, namespace)
