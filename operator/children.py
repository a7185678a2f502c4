"""The objects a ModelDeployment owns, rendered as plain dicts (pure: no cluster access)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator import naming
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import GROUP, KIND, VERSION, ModelDeploymentSpec, ServingMode

JOB_STEPS = ("fetch", "merge", "quantize", "validate", "publish")


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str | None = None  # None when rendering without a cluster


@dataclass(frozen=True)
class Images:
    merger: str = naming.DEFAULT_MERGER_IMAGE
    operator: str = naming.DEFAULT_OPERATOR_IMAGE  # slim: runs `lorafuse job verify`


@dataclass(frozen=True)
class ServingPlan:
    """What the vLLM Deployment serves: the mode, the artifact (merged) and the sizing."""

    mode: ServingMode
    sizing: Sizing
    artifact_path: str | None = None
    artifact_digest: str | None = None


def metadata(owner: Owner, name: str, component: str, **extra_labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**naming.labels(owner.name, component), **extra_labels},
    }
    if owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def claim_for(owner: Owner, spec: ModelDeploymentSpec) -> str:
    return spec.storage.existing_claim or naming.claim_name(owner.name)


def persistent_volume_claim(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The model volume, unless the spec names an existing claim."""
    storage = spec.storage
    if storage.existing_claim:
        return None
    body: dict[str, Any] = {
        "accessModes": list(storage.access_modes),
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        body["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, naming.claim_name(owner.name), "storage"),
        "spec": body,
    }


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


def job_steps(plan: MergePlan) -> list[str]:
    return [s for s in JOB_STEPS if s != "quantize" or plan.quantization.method != "none"]


def merge_job(
    owner: Owner, spec: ModelDeploymentSpec, plan: MergePlan, plan_hash: str, images: Images
) -> dict[str, Any]:
    """One init container per step, so `kubectl get pods` shows how far the merge is."""
    workdir = f"{naming.WORK_ROOT}/{plan.artifact_name()}"
    containers = [_step_container(step, spec, workdir, images) for step in job_steps(plan)]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": containers[:-1],
        "containers": containers[-1:],  # publish: the last step writes the Job's result
        "volumes": _job_volumes(owner, spec, plan_hash),
    }
    if spec.job.node_selector:
        pod_spec["nodeSelector"] = dict(spec.job.node_selector)
    if spec.job.tolerations:
        pod_spec["tolerations"] = list(spec.job.tolerations)
    name = naming.job_name(owner.name, plan_hash)
    plan_label = {naming.LABEL_PLAN: plan_hash}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, "merge", **plan_label),
        "spec": {
            "backoffLimit": spec.job.backoff_limit,
            "activeDeadlineSeconds": spec.job.active_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": {**naming.labels(owner.name, "merge"), **plan_label},
                    "annotations": {naming.ANNOTATION_OWNER: owner.name},
                },
                "spec": pod_spec,
            },
        },
    }


def _step_container(
    step: str, spec: ModelDeploymentSpec, workdir: str, images: Images
) -> dict[str, Any]:
    mounts = [
        {"name": "models", "mountPath": naming.MODELS_MOUNT},
        {"name": "plan", "mountPath": naming.PLAN_MOUNT, "readOnly": True},
        *_input_mounts(spec),
        *_source_mounts(spec),
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
            *[dict(var) for var in spec.job.env],
        ],
        "resources": dict(spec.job.resources),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


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


def _sources(spec: ModelDeploymentSpec) -> list[str]:
    return [spec.base.source, *(a.source for a in spec.adapters)]


def _source_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": f"source-{index}",
            "mountPath": f"{naming.SOURCES_MOUNT}/{claim}",
            "readOnly": True,
        }
        for index, claim in enumerate(naming.source_claims(_sources(spec)))
    ]


def _source_volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    return [
        {"name": f"source-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for index, claim in enumerate(naming.source_claims(_sources(spec)))
    ]


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
    return volumes + _source_volumes(spec)


# --- serving ----------------------------------------------------------------------------


def served_names(owner: Owner, spec: ModelDeploymentSpec) -> str:
    return spec.serving.served_model_name or owner.name


def vllm_args(owner: Owner, spec: ModelDeploymentSpec, serving: ServingPlan) -> list[str]:
    """The vLLM command line. Clients ask for the served name in both modes."""
    served = served_names(owner, spec)
    opts = spec.serving
    if serving.mode == "merged":
        args = ["--model", serving.artifact_path or "", "--served-model-name", served]
    else:
        base, revision = naming.serving_ref(spec.base.source)
        args = ["--model", base, "--served-model-name", f"{served}-base"]
        if revision or spec.base.revision:
            args += ["--revision", revision or spec.base.revision or ""]
        args += ["--enable-lora", "--max-lora-rank", str(opts.max_lora_rank)]
        modules = lora_modules(owner, spec)
        args += ["--max-loras", str(len(modules)), "--lora-modules", *modules]
    args += ["--host", "0.0.0.0", "--port", str(opts.port)]
    if serving.sizing.max_model_len is not None:
        args += ["--max-model-len", str(serving.sizing.max_model_len)]
    if serving.sizing.max_num_seqs is not None:
        args += ["--max-num-seqs", str(serving.sizing.max_num_seqs)]
    if opts.gpu.count:
        args += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
        args += ["--tensor-parallel-size", str(opts.tensor_parallel_size)]
    return args + list(opts.extra_args)


def lora_modules(owner: Owner, spec: ModelDeploymentSpec) -> list[str]:
    """`name=path` per adapter; a single adapter is served under the served name itself."""
    if len(spec.adapters) == 1:
        names = [served_names(owner, spec)]
    else:
        names = [adapter.name for adapter in spec.adapters]
    paths = [naming.serving_ref(a.source)[0] for a in spec.adapters]
    return [f"{name}={path}" for name, path in zip(names, paths, strict=True)]


def model_names(owner: Owner, spec: ModelDeploymentSpec, mode: ServingMode) -> list[str]:
    """The model names the Service answers to, as status shows them."""
    served = served_names(owner, spec)
    if mode == "merged":
        return [served]
    return [f"{served}-base", *(m.split("=", 1)[0] for m in lora_modules(owner, spec))]


def serving_deployment(
    owner: Owner, spec: ModelDeploymentSpec, serving: ServingPlan, images: Images
) -> dict[str, Any]:
    opts = spec.serving
    annotations = {"lorafuse.dev/serving-mode": serving.mode, naming.ANNOTATION_OWNER: owner.name}
    init_containers = []
    if serving.mode == "merged":
        annotations[naming.ANNOTATION_DIGEST] = serving.artifact_digest or ""
        init_containers.append(_verify_container(serving, images))
    pod_spec: dict[str, Any] = {
        "initContainers": init_containers,
        "containers": [_vllm_container(owner, spec, serving)],
        "volumes": [
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": claim_for(owner, spec), "readOnly": True},
            },
            # vLLM's workers share tensors through /dev/shm; the default 64 MiB is too small.
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            *_source_volumes(spec),
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


def _verify_container(serving: ServingPlan, images: Images) -> dict[str, Any]:
    """Checks the artifact's digest before vLLM reads a byte of it."""
    return {
        "name": "verify",
        "image": images.operator,
        "command": ["lorafuse", "job", "verify"],
        "args": [
            "--artifact",
            serving.artifact_path or "",
            "--digest",
            serving.artifact_digest or "",
            "--result-file",
            naming.TERMINATION_LOG,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": naming.MODELS_MOUNT, "readOnly": True}],
    }


def _vllm_container(
    owner: Owner, spec: ModelDeploymentSpec, serving: ServingPlan
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
        "args": vllm_args(owner, spec, serving),
        "ports": [{"name": "http", "containerPort": opts.port, "protocol": "TCP"}],
        "env": [
            {"name": "HF_HOME", "value": naming.HF_CACHE},
            *[dict(var) for var in opts.env],
        ],
        "resources": resources,
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
            *_source_mounts(spec),
        ],
    }


def _health() -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}}


def service(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, naming.service_name(owner.name), "serving"),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector(owner.name, "serving"),
            "ports": [
                {"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def endpoint(owner: Owner, spec: ModelDeploymentSpec) -> str:
    host = f"{naming.service_name(owner.name)}.{owner.namespace}.svc"
    return f"http://{host}:{spec.serving.port}/v1"
