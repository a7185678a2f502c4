"""The prune Job: `lorafuse prune` on the model volume, removing superseded artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import (
    Images,
    Owner,
    container_security_context,
    metadata,
    pod_security_context,
)
from lorafuse.operator.children.pod_template import with_pod_template
from lorafuse.operator.children.storage import claim_for
from lorafuse.operator.spec import HistoryEntry, ModelDeploymentSpec

COMPONENT = "prune"
ANNOTATION_RUN = "lorafuse.dev/prune-run"  # which run of the resource's prune Jobs this is
TTL_SECONDS = 3600  # a finished prune Job goes after an hour (then the same targets may retry)
DEADLINE_SECONDS = 1800
# Removing folders needs little; requests keep the pod out of BestEffort.
REQUESTS = {"cpu": "100m", "memory": "128Mi"}


def prune_job(
    owner: Owner,
    spec: ModelDeploymentSpec,
    name: str,
    run: int,
    targets: Sequence[HistoryEntry],
    images: Images,
) -> dict[str, Any]:
    """One container in the slim operator image (no torch), the model volume at /models,
    placed like the merge Job (it mounts the same claim)."""
    args = ["--root", naming.MODELS_MOUNT]
    for entry in targets:
        args += ["--artifact", f"{entry.name}={entry.plan_hash}"]
    container = {
        "name": COMPONENT,
        "image": images.operator,
        "command": ["lorafuse", "prune"],
        "args": [*args, "--result-file", naming.TERMINATION_LOG],
        "resources": {"requests": dict(REQUESTS)},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "models", "mountPath": naming.MODELS_MOUNT}],
    }
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": claim_for(owner, spec)}}
        ],
    }
    if spec.job.node_selector:
        pod_spec["nodeSelector"] = dict(spec.job.node_selector)
    if spec.job.tolerations:
        pod_spec["tolerations"] = list(spec.job.tolerations)
    template = {
        "metadata": {
            "labels": naming.labels(owner.name, COMPONENT),
            "annotations": {naming.ANNOTATION_OWNER: owner.name},
        },
        "spec": pod_spec,
    }
    meta = metadata(owner, name, COMPONENT)
    meta["annotations"] = {ANNOTATION_RUN: str(run)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": with_pod_template(template, spec.job.pod_template),
        },
    }
