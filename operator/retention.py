"""Artifact retention, pure: which superseded artifacts a prune Job removes, and its outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from lorafuse.merger.files.prune import NAME as _NAME
from lorafuse.merger.files.prune import PLAN_HASH as _PLAN_HASH
from lorafuse.merger.pipeline.prune_result import PruneResult
from lorafuse.operator import naming
from lorafuse.operator.spec import HistoryEntry, ModelDeploymentStatus, RetentionStatus

PruneState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Kept:
    """Artifacts that stay whatever spec.storage.keepArtifacts says."""

    served: str | None = None  # status.artifact: served, or kept to roll back to
    pinned: str | None = None  # spec.rollback.to
    current: str | None = None  # the current plan's artifact (its Job may be running)
    digests: frozenset[str] = frozenset()  # what old pods still serve during a rollout
    others: frozenset[str] = frozenset()  # what other ModelDeployments record or merge

    def keeps(self, entry: HistoryEntry) -> bool:
        names = {self.served, self.pinned, self.current} | self.others
        return entry.name in names or (entry.digest is not None and entry.digest in self.digests)


def owned(entry: HistoryEntry) -> bool:
    """The entry names a folder this resource's merge Job made: ARTIFACT_ROOT/NAME, with NAME
    one folder name ending in its plan's hash (status can be edited; the volume is shared)."""
    plan = entry.plan_hash or ""
    return (
        bool(_NAME.match(entry.name))
        and ".." not in entry.name
        and bool(_PLAN_HASH.match(plan))
        and entry.name.endswith(f"--{plan[:12]}")
        and entry.path == f"{naming.ARTIFACT_ROOT}/{entry.name}"
    )


def prunable(history: Sequence[HistoryEntry], keep: int, kept: Kept) -> list[HistoryEntry]:
    """Entries older than the `keep` newest (history is newest last) that nothing keeps and
    that this resource's Jobs made; oldest first."""
    older = list(history)[: max(len(history) - keep, 0)]
    return [entry for entry in older if owned(entry) and not kept.keeps(entry)]


def serving_digests(previous: str | None) -> frozenset[str]:
    """The digests in status.serving.previous ("merged sha256:...")."""
    return frozenset(word for word in (previous or "").split() if word.startswith("sha256:"))


def prune_job_name(owner: str, targets: Sequence[HistoryEntry]) -> str:
    """One name per set of targets: the same set is never pruned twice in a row."""
    listed = "\n".join(sorted(f"{e.name}={e.plan_hash}" for e in targets))
    return naming.fit(owner, f"-prune-{hashlib.sha256(listed.encode()).hexdigest()[:10]}")


@dataclass(frozen=True)
class PruneRun:
    """A prune Job of this resource as the cluster shows it."""

    name: str
    run: int  # its lorafuse.dev/prune-run annotation: the count of runs it makes
    state: PruneState
    result: PruneResult | None = None  # the termination message, parsed
    message: str | None = None  # the Job's condition, when there is no result


@dataclass(frozen=True)
class RetentionDecision:
    status: ModelDeploymentStatus  # history without what is gone, retention updated
    start: list[HistoryEntry] = field(default_factory=list)  # a new prune Job's targets
    job: str | None = None  # its name
    run: int = 0  # its run number
    delete: list[str] = field(default_factory=list)  # counted prune Jobs no longer needed


def decide_retention(
    status: ModelDeploymentStatus,
    owner: str,
    keep: int,
    kept: Kept,
    runs: Sequence[PruneRun],
    settled: bool = True,
) -> RetentionDecision:
    """Count finished runs not counted yet (once each: their run number is above
    status.retention.runs), then start a Job for what is prunable when none runs, the
    serving pods are `settled` on one artifact and these targets were not just tried."""
    retention = status.retention or RetentionStatus()
    history = list(status.history)
    for run in sorted(runs, key=lambda r: r.run):
        if run.state != "Running" and run.run > retention.runs:
            retention, history = _counted(retention, history, run)
    targets = prunable(history, keep, kept)
    name = prune_job_name(owner, targets) if targets else None
    running = [r for r in runs if r.state == "Running"]
    jobs = {r.name for r in runs}
    # What the latest run left busy is tried again with something new, or once its Job is
    # gone (ttlSecondsAfterFinished); the same targets are never run twice in a row.
    left = set(retention.busy) if retention.job in jobs else set()
    fresh = name not in jobs and not {e.name for e in targets} <= left
    start = bool(targets) and settled and not running and fresh
    if running:
        latest = max(running, key=lambda r: r.run)
        retention = retention.model_copy(update={"job": latest.name, "state": "Running"})
    elif start:
        retention = retention.model_copy(
            update={
                "job": name,
                "state": "Running",
                "message": "removing " + ", ".join(e.name for e in targets),
            }
        )
    keep_jobs = {name, retention.job}
    delete = [r.name for r in runs if r.state != "Running" and r.name not in keep_jobs]
    new = status.model_copy(update={"history": history, "retention": _or_none(retention)})
    if not start:
        return RetentionDecision(new, delete=delete)
    return RetentionDecision(new, start=targets, job=name, run=retention.runs + 1, delete=delete)


def _counted(
    retention: RetentionStatus, history: list[HistoryEntry], run: PruneRun
) -> tuple[RetentionStatus, list[HistoryEntry]]:
    """A finished run folded into status: what it removed leaves the history."""
    result = run.result
    if run.state == "Succeeded" and result is not None and result.ok:
        gone = set(result.pruned)
        counted = retention.model_copy(
            update={
                "reclaimed_bytes": retention.reclaimed_bytes + result.reclaimed_bytes,
                "pruned_artifacts": retention.pruned_artifacts + len(gone),
                "runs": run.run,
                "job": run.name,
                "state": "Succeeded",
                "last_pruned": sorted(gone),
                "busy": list(result.busy),
                "message": result.message,
            }
        )
        return counted, [entry for entry in history if entry.name not in gone]
    message = (result.message if result else None) or run.message or "left no result"
    failed = retention.model_copy(
        update={
            "runs": run.run,
            "job": run.name,
            "state": "Failed",
            "last_pruned": [],
            "busy": [],
            "message": message[:1000],
        }
    )
    return failed, history


def _or_none(retention: RetentionStatus) -> RetentionStatus | None:
    """No retention section until there is something to say."""
    return None if retention == RetentionStatus() else retention
