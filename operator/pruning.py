"""Artifact retention in the cluster: observe prune Jobs, start one, count what they freed."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lorafuse.merger.pipeline.prune_result import parse_prune_result
from lorafuse.operator import naming
from lorafuse.operator.children.common import Images, Owner
from lorafuse.operator.children.prune import ANNOTATION_RUN, COMPONENT, prune_job
from lorafuse.operator.kube import Kube
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.metrics import Metrics
from lorafuse.operator.retention import (
    Kept,
    PruneRun,
    decide_retention,
    prunable,
    serving_digests,
)
from lorafuse.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    RetentionStatus,
)

log = logging.getLogger(__name__)


def retain(
    kube: Kube,
    images: Images,
    owner: Owner,
    spec: ModelDeploymentSpec,
    current_artifact: str,
    old: ModelDeploymentStatus,
    new: ModelDeploymentStatus,
    emit: Any,
) -> ModelDeploymentStatus:
    """`new` with finished prune Jobs counted, after starting one for what is prunable."""
    new = new.model_copy(update={"retention": old.retention})
    if not owner.uid:
        return new
    previous = new.serving.previous if new.serving else None
    kept = Kept(
        served=new.artifact.name if new.artifact else None,
        pinned=spec.rollback.to,
        current=current_artifact,
        digests=serving_digests(previous),
    )
    keep = spec.storage.keep_artifacts
    if prunable(new.history, keep, kept):  # only then ask what the others hold
        kept = replace(kept, others=other_artifacts(kube, owner))
    runs = observe_prunes(kube, owner)
    decision = decide_retention(new, owner.name, keep, kept, runs, settled=previous is None)
    status = decision.status
    if decision.job is not None:
        job = prune_job(owner, spec, decision.job, decision.run, decision.start, images)
        assert owner.uid is not None
        problem = kube.foreign("Job", owner.namespace, decision.job, owner.uid)
        if problem is None:
            try:
                kube.apply(job)
            except ApiException as exc:
                problem = f"job {decision.job}: {exc.status} {exc.reason}"
        if problem is not None:
            emit("Warning", "PruneFailed", problem)
            retention = (status.retention or RetentionStatus()).model_copy(
                update={"state": "Failed", "message": problem}
            )
            return status.model_copy(update={"retention": retention})
        names = ", ".join(entry.name for entry in decision.start)
        emit("Normal", "PruneStarted", f"job {decision.job}: removing {names}")
    for name in decision.delete:
        kube.delete_job(owner.namespace, name)
    return status


def count_pruned(
    metrics: Metrics,
    owner: Owner,
    old: ModelDeploymentStatus,
    new: ModelDeploymentStatus,
    emit: Any,
) -> None:
    """Metrics and an event for prune runs that the status just written counts."""
    before = old.retention or RetentionStatus()
    after = new.retention or RetentionStatus()
    if after.runs <= before.runs:
        return
    freed = after.reclaimed_bytes - before.reclaimed_bytes
    removed = after.pruned_artifacts - before.pruned_artifacts
    labels = (owner.namespace, owner.name)
    if freed > 0:
        metrics.reclaimed_bytes.labels(*labels).inc(freed)
    if removed > 0:
        metrics.artifacts_pruned.labels(*labels).inc(removed)
    if after.state == "Failed":
        emit("Warning", "PruneFailed", f"job {after.job}: {after.message}")
    else:
        gone = ", ".join(after.last_pruned) or "nothing"
        emit("Normal", "ArtifactsPruned", f"removed {gone}; {freed} bytes freed")


def observe_prunes(kube: Kube, owner: Owner) -> list[PruneRun]:
    """This resource's prune Jobs (by owner UID: a deleted namesake's may linger)."""
    selector = naming.label_selector(naming.selector(owner.name, COMPONENT))
    jobs = kube.batch.list_namespaced_job(owner.namespace, label_selector=selector).items
    runs = []
    for job in jobs:
        refs = job.metadata.owner_references or []
        if not any(ref.uid == owner.uid for ref in refs):
            continue
        run = _int((job.metadata.annotations or {}).get(ANNOTATION_RUN))
        status = job.status
        failed = next(
            (c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"),
            None,
        )
        if not status.succeeded and failed is None:
            runs.append(PruneRun(job.metadata.name, run, "Running"))
            continue
        result = _result(kube, owner.namespace, job.metadata.name)
        state = "Succeeded" if status.succeeded else "Failed"
        message = f"{failed.reason}: {failed.message}" if failed is not None else None
        runs.append(PruneRun(job.metadata.name, run, state, result, message))
    return runs


def other_artifacts(kube: Kube, owner: Owner) -> frozenset[str]:
    """Artifacts the namespace's other ModelDeployments serve, keep or merge now: a volume
    may be shared, and the same plan makes the same artifact."""
    listed = kube.custom.list_namespaced_custom_object(GROUP, VERSION, owner.namespace, PLURAL)
    names: set[str] = set()
    for item in listed.get("items", []):
        if item["metadata"].get("uid") == owner.uid:
            continue
        status = item.get("status") or {}
        artifact = status.get("artifact") or {}
        names.update(str(e.get("name")) for e in status.get("history") or [] if e.get("name"))
        if artifact.get("name"):
            names.add(str(artifact["name"]))
        try:
            spec = ModelDeploymentSpec.model_validate(item.get("spec") or {})
        except ValidationError:
            continue
        names.add(plan_for(spec).artifact_name())
    return frozenset(names)


def _result(kube: Kube, namespace: str, job: str) -> Any:
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True):
        for container in (pod.status.container_statuses if pod.status else None) or []:
            done = container.state and container.state.terminated
            if container.name == COMPONENT and done:
                return parse_prune_result(done.message)
    return None


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
