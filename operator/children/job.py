"""The merge: the plan's ConfigMap and the Job that runs one container per step."""

from __future__ import annotations

import json
from typing import Any

from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.merger.pipeline.steps import steps_for
from lorafuse.operator import naming
from lorafuse.operator.children.common import (
    Images,
    Owner,
    container_security_context,
    hub_token_env,
    metadata,
    pod_security_context,
    source_mounts,
    source_volumes,
)
from lorafuse.operator.children.pod_template import with_pod_template
from lorafuse.operator.children.storage import claim_for
from lorafuse.operator.spec import ModelDeploymentSpec


def plan_config_map(owner: Owner, plan: MergePlan, plan_hash: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            owner,
            naming.plan_config_map_name(owner.name, plan_hash),
            "plan",
            **{naming.LABEL_PLAN: plan_hash},
        ),
        "data": {"plan.json": json.dumps(plan.model_dump(mode="json"), indent=2, sort_keys=True)},
    }


def merge_job(
    owner: Owner,
    spec: ModelDeploymentSpec,
    plan: MergePlan,
    plan_hash: str,
    images: Images,
    *,
    steps: list[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One init container per step, so `kubectl get pods` shows how far the merge is."""
    workdir = f"{naming.WORK_ROOT}/{plan.artifact_name()}"
    steps = steps_for(plan) if steps is None else steps
    containers = [_step_container(step, spec, workdir, images) for step in steps]
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "restartPolicy": "Never",
        "initContainers": containers[:-1],
        "containers": containers[-1:],  # publish: the last step writes the Job's result
        "volumes": _job_volumes(owner, spec, plan_hash),
    }
    if spec.job.node_selector:
        pod_spec["nodeSelector"] = dict(spec.job.node_selector)
    if spec.job.tolerations:
        pod_spec["tolerations"] = list(spec.job.tolerations)
    name = name or naming.job_name(owner.name, plan_hash)
    plan_label = {naming.LABEL_PLAN: plan_hash}
    template = {
        "metadata": {
            "labels": {**naming.labels(owner.name, "merge"), **plan_label},
            "annotations": {naming.ANNOTATION_OWNER: owner.name},
        },
        "spec": pod_spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, "merge", **plan_label),
        "spec": {
            "backoffLimit": spec.job.backoff_limit,
            "activeDeadlineSeconds": spec.job.active_deadline_seconds,
            "template": with_pod_template(template, spec.job.pod_template),
        },
    }


def fetch_job(
    owner: Owner, spec: ModelDeploymentSpec, plan: MergePlan, plan_hash: str, images: Images
) -> dict[str, Any]:
    """Adapter mode's Job: only the plan's fetch step, which resolves every hf:// source to
    its commit (its result). Same plan, volume and work directory as the merge, which then
    finds the sources fetched."""
    name = naming.fetch_job_name(owner.name, plan_hash)
    return merge_job(owner, spec, plan, plan_hash, images, steps=["fetch"], name=name)


def _step_container(
    step: str, spec: ModelDeploymentSpec, workdir: str, images: Images
) -> dict[str, Any]:
    mounts = [
        {"name": "models", "mountPath": naming.MODELS_MOUNT},
        {"name": "plan", "mountPath": naming.PLAN_MOUNT, "readOnly": True},
        *_input_mounts(spec),
        *source_mounts(spec),
    ]
    return {
        "name": step,
        "image": spec.job.image or images.merger,
        "command": ["lorafuse", "job", step],
        "args": [
            "--plan",
            naming.PLAN_FILE,
            "--workdir",
            workdir,
            "--result-file",
            naming.TERMINATION_LOG,
        ],
        "env": [
            {"name": "HF_HOME", "value": naming.HF_CACHE},
            {"name": "LORAFUSE_PVC_ROOT", "value": naming.SOURCES_MOUNT},
            *hub_token_env(spec),
            *[dict(var) for var in spec.job.env],
        ],
        "resources": _job_resources(spec, images),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }


def _job_resources(spec: ModelDeploymentSpec, images: Images) -> dict[str, Any]:
    if spec.job.resources:
        return {key: dict(value) for key, value in spec.job.resources.items()}
    return {"requests": dict(images.job_requests)} if images.job_requests else {}


def _input_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    return [
        {"name": f"input-{kind}", "mountPath": f"{naming.INPUTS_MOUNT}/{kind}", "readOnly": True}
        for kind, _ref in _config_map_inputs(spec)
    ]


def _config_map_inputs(spec: ModelDeploymentSpec) -> list[tuple[str, Any]]:
    refs = [("eval", spec.validation.eval), ("calibration", spec.quantization.calibration)]
    if spec.quantization.method == "none":
        refs = refs[:1]
    return [(kind, ref.config_map) for kind, ref in refs if ref and ref.config_map]


def _job_volumes(owner: Owner, spec: ModelDeploymentSpec, plan_hash: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": claim_for(owner, spec)}},
        {
            "name": "plan",
            "configMap": {"name": naming.plan_config_map_name(owner.name, plan_hash)},
        },
    ]
    for kind, ref in _config_map_inputs(spec):
        volumes.append(
            {
                "name": f"input-{kind}",
                "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
            }
        )
    return volumes + source_volumes(spec)
