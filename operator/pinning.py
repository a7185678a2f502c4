"""Adapter serving of exactly the commits a merge Job's fetch step resolved.

vLLM downloads an hf:// base at `--revision` and the serving pod's init containers fetch
each hf:// adapter at its revision when the pod starts: a branch or tag written in the spec
would resolve again in every pod, to whatever it points at then. When status records the
commit a source resolved to (status.resolvedSources, from the fetch step's result), the
serving pods get that commit instead."""

from __future__ import annotations

import re
from collections.abc import Iterable

from lorafuse.operator.spec import ModelDeploymentSpec, SourceCommitStatus

COMMIT = re.compile(r"[0-9a-f]{40}")  # a full commit id: pinned as written


def source_key(source: str, revision: str | None) -> str:
    """A source as the merge plan (and so the fetch step's result) names it."""
    return f"{source}@{revision}" if revision else source


def pin_sources(
    spec: ModelDeploymentSpec, resolved: Iterable[SourceCommitStatus]
) -> ModelDeploymentSpec:
    """`spec` with every hf:// source whose commit is known pinned to that commit."""
    commits = {r.source: r.commit for r in resolved if r.source.startswith("hf://")}
    if not commits:
        return spec
    changes: dict[str, object] = {}
    base = spec.base
    if commit := commits.get(source_key(base.source, base.revision)):
        repo = base.source.partition("@")[0]
        changes["base"] = base.model_copy(update={"source": repo, "revision": commit})
    adapters = [
        a.model_copy(update={"source": f"{a.source.partition('@')[0]}@{commits[a.source]}"})
        if a.source in commits
        else a
        for a in spec.adapters
    ]
    if adapters != spec.adapters:
        changes["adapters"] = adapters
    return spec.model_copy(update=changes) if changes else spec


def hub_sources(spec: ModelDeploymentSpec) -> list[str]:
    """The spec's hf:// sources as the merge plan names them (base first)."""
    base = source_key(spec.base.source, spec.base.revision)
    sources = [base, *(a.source for a in spec.adapters)]
    return [s for s in dict.fromkeys(sources) if s.startswith("hf://")]


def unresolved(spec: ModelDeploymentSpec, resolved: Iterable[SourceCommitStatus]) -> list[str]:
    """The hf:// sources whose commit is unknown: neither written as a full commit id nor
    resolved by a fetch step (an adapter-mode spec with any of them runs a fetch Job first)."""
    known = {r.source for r in resolved}
    return [
        s for s in hub_sources(spec)
        if s not in known and not COMMIT.fullmatch(s.partition("@")[2])
    ]
