"""GGUF artifacts are for download: published with digest and provenance, never served.

vLLM (0.32 in scripts/vllm-venv.sh) has no GGUF loader at all, on CPU or GPU, so the
operator starts no vLLM on a gguf-* artifact: status says where the file is instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lorafuse.merger.pipeline.plan import GGUF_FILE, is_gguf
from lorafuse.operator.spec import ArtifactStatus, ModelDeploymentSpec

if TYPE_CHECKING:
    from lorafuse.operator.lifecycle import Decision


def for_download(artifact: ArtifactStatus | None) -> bool:
    """A GGUF export: a file for llama.cpp and Ollama, not a checkpoint vLLM loads."""
    return artifact is not None and is_gguf(artifact.quantization)


def download_message(artifact: ArtifactStatus) -> str:
    """Status's one line for a published GGUF artifact: where the file is."""
    return (
        f"{artifact.quantization} artifact for download: {artifact.path}/{GGUF_FILE} on the "
        "model volume (with Modelfile and lorafuse.json); vLLM does not load GGUF, so "
        "nothing is served"
    )


def without_vllm(spec: ModelDeploymentSpec, decision: Decision) -> Decision:
    """`decision` with no vLLM on a GGUF artifact: a published (or pinned) one is phase
    Published for download; a gguf-* spec that failed falls back to nothing, not to serving
    base + adapters; any other decision is returned as it is."""
    artifact = decision.artifact
    if decision.serve == "merged" and for_download(artifact):
        assert artifact is not None
        pinned = decision.rollback is not None and decision.rollback.reason == "Pinned"
        if (decision.current_artifact or pinned) and not decision.create_job:
            return replace(
                decision,
                serve=None,
                rollback=None,
                phase="Published",
                download=download_message(artifact),
            )
        # being made again (healing), or the last artifact behind a failure: not served
        phase = "Failed" if decision.phase == "RolledBack" else decision.phase
        return replace(decision, serve=None, rollback=None, phase=phase)
    gguf_failed = decision.phase == "RolledBack" and decision.serve == "adapter"
    if is_gguf(spec.quantization.method) and gguf_failed:
        return replace(decision, serve=None, rollback=None, phase="Failed")
    return decision
