"""The vLLM Deployment: a digest check of the artifact (merged mode), then vLLM."""

from __future__ import annotations

import math
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.common import (
    Images,
    Owner,
    container_security_context,
    metadata,
    pod_security_context,
    source_mounts,
    source_volumes,
)
from lorafuse.operator.children.storage import claim_for
from lorafuse.operator.serving_target import ServingTarget, vllm_options
from lorafuse.operator.spec import ModelDeploymentSpec
from lorafuse.serving.vllm_args import vllm_args


def serving_deployment(
    owner: Owner, spec: ModelDeploymentSpec, target: ServingTarget, images: Images
) -> dict[str, Any]:
    opts = spec.serving
    annotations = {"lorafuse.dev/serving-mode": target.mode, naming.ANNOTATION_OWNER: owner.name}
    init_containers = []
    if target.mode == "merged":
        annotations[naming.ANNOTATION_DIGEST] = target.artifact_digest or ""
        init_containers.append(_verify_container(target, images))
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "initContainers": init_containers,
        "containers": [_vllm_container(owner, spec, target)],
        "volumes": [
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": claim_for(owner, spec), "readOnly": True},
            },
            # vLLM's workers share tensors through /dev/shm; the default 64 MiB is too small.
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            *source_volumes(spec),
        ],
    }
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod_spec["tolerations"] = list(opts.tolerations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, naming.deployment_name(owner.name), "serving"),
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": naming.selector(owner.name, "serving")},
            # A new pod must be Ready before an old one goes: never zero ready replicas.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": naming.labels(owner.name, "serving"),
                    "annotations": annotations,
                },
                "spec": pod_spec,
            },
        },
    }


def _verify_container(target: ServingTarget, images: Images) -> dict[str, Any]:
    """Checks the artifact's digest before vLLM reads a byte of it."""
    return {
        "name": "verify",
        "image": images.operator,
        "command": ["lorafuse", "job", "verify"],
        "args": [
            "--artifact",
            target.artifact_path or "",
            "--digest",
            target.artifact_digest or "",
            "--result-file",
            naming.TERMINATION_LOG,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "models", "mountPath": naming.MODELS_MOUNT, "readOnly": True}],
    }


def _vllm_container(
    owner: Owner, spec: ModelDeploymentSpec, target: ServingTarget
) -> dict[str, Any]:
    opts = spec.serving
    resources = {key: dict(value) for key, value in opts.resources.items()}
    if opts.gpu.count:
        for section in ("limits", "requests"):
            # Quantities are strings: server-side apply rejects a bare integer here.
            resources.setdefault(section, {})[opts.gpu.resource_name] = str(opts.gpu.count)
    period = opts.probes.period_seconds
    return {
        "name": "vllm",
        "image": opts.image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(vllm_options(owner.name, spec, target)),
        "ports": [{"name": "http", "containerPort": opts.port, "protocol": "TCP"}],
        "env": [
            {"name": "HF_HOME", "value": naming.HF_CACHE},
            *[dict(var) for var in opts.env],
        ],
        "resources": resources,
        "securityContext": container_security_context(),
        # Loading weights can take many minutes; liveness only counts once startup passed.
        "startupProbe": {
            **_health(),
            "periodSeconds": period,
            "failureThreshold": max(1, math.ceil(opts.probes.startup_timeout_seconds / period)),
        },
        "readinessProbe": {**_health(), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**_health(), "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [
            {"name": "models", "mountPath": naming.MODELS_MOUNT, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            *source_mounts(spec),
        ],
    }


def _health() -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}}
