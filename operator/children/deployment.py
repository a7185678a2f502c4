"""The vLLM Deployment: a digest check of the artifact (merged mode), then vLLM."""

from __future__ import annotations

import math
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children import adapters
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
from lorafuse.operator.serving_target import ServingTarget
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
    else:
        init_containers += _fetch_adapter_containers(spec, images)
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
    if target.mode == "adapter":
        # The model volume is read-only here; vLLM downloads hf:// sources into this cache.
        pod_spec["volumes"].append({"name": "hf-cache", "emptyDir": {}})
    if adapters.runtime_adapters(spec, target):
        pod_spec["volumes"].append(adapters.pod_volume(owner))
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod_spec["tolerations"] = list(opts.tolerations)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, naming.deployment_name(owner.name), "serving"),
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": naming.selector(owner.name, "serving")},
            # By default a new pod must be Ready before an old one goes (never zero ready
            # replicas); a full GPU pool has no room for a surge pod and sets maxSurge 0.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxUnavailable": opts.rollout.max_unavailable,
                    "maxSurge": opts.rollout.max_surge,
                },
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
    with_pod_template(deployment["spec"]["template"], opts.pod_template)
    if opts.autoscaling is not None:
        # Left out of the applied object, so the HPA alone owns the count and the operator
        # never sets it back on the next reconcile.
        del deployment["spec"]["replicas"]
    return deployment


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
        "args": vllm_args(adapters.pod_options(owner.name, spec, target)),
        "ports": [{"name": "http", "containerPort": opts.port, "protocol": "TCP"}],
        "env": [
            {"name": "HF_HOME", "value": _hf_home(target)},
            *(hub_token_env(spec) if target.mode == "adapter" else []),
            *(adapters.pod_env() if adapters.runtime_adapters(spec, target) else []),
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
        "readinessProbe": {
            **_health(),
            "periodSeconds": 5,
            "timeoutSeconds": opts.probes.readiness_timeout_seconds,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **_health(),
            "periodSeconds": 15,
            "timeoutSeconds": opts.probes.liveness_timeout_seconds,
            "failureThreshold": 4,
        },
        "volumeMounts": [
            {"name": "models", "mountPath": naming.MODELS_MOUNT, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            *source_mounts(spec),
            *_cache_mounts(target),
            *([adapters.pod_mount()] if adapters.runtime_adapters(spec, target) else []),
        ],
    }


def _fetch_adapter_containers(spec: ModelDeploymentSpec, images: Images) -> list[dict[str, Any]]:
    """One init container per hf:// adapter: its pinned revision into the writable cache."""
    download = (
        "import sys; from huggingface_hub import snapshot_download; "
        "snapshot_download(sys.argv[1], revision=sys.argv[2], local_dir=sys.argv[3])"
    )
    containers = []
    for index, adapter in enumerate(a for a in spec.adapters if a.source.startswith("hf://")):
        repo, revision = naming.serving_ref(adapter.source)
        containers.append(
            {
                "name": f"fetch-adapter-{index}",
                "image": spec.job.image or images.merger,
                "command": ["python3", "-c", download],
                "args": [repo, revision or "main", naming.adapter_cache_path(adapter.source)],
                "env": [
                    {"name": "HF_HOME", "value": naming.SERVING_HF_CACHE},
                    *hub_token_env(spec),
                ],
                "securityContext": container_security_context(),
                "volumeMounts": [{"name": "hf-cache", "mountPath": naming.SERVING_CACHE_MOUNT}],
            }
        )
    return containers


def _hf_home(target: ServingTarget) -> str:
    return naming.SERVING_HF_CACHE if target.mode == "adapter" else naming.HF_CACHE


def _cache_mounts(target: ServingTarget) -> list[dict[str, Any]]:
    if target.mode != "adapter":
        return []
    return [{"name": "hf-cache", "mountPath": naming.SERVING_CACHE_MOUNT}]


def _health() -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}}
