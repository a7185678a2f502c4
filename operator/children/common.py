"""What every child shares: its owner, the images, metadata, and the pvc:// source volumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.spec import GROUP, KIND, VERSION, ModelDeploymentSpec


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str | None = None  # None when rendering without a cluster


# What a merge step requests when spec.job.resources is empty: never BestEffort, so the
# kubelet does not evict it first; the operator's --job-cpu/--job-memory change it.
DEFAULT_JOB_REQUESTS = {"cpu": "1", "memory": "4Gi"}


@dataclass(frozen=True)
class Images:
    """The images children run, and the installer's defaults for the merge Job."""

    merger: str = naming.DEFAULT_MERGER_IMAGE
    operator: str = naming.DEFAULT_OPERATOR_IMAGE  # slim: runs `lorafuse job verify`
    job_requests: tuple[tuple[str, str], ...] = tuple(DEFAULT_JOB_REQUESTS.items())


@dataclass(frozen=True)
class ServedApis:
    """API versions of kinds that moved between Kubernetes releases, as the cluster serves
    them (kube.py asks discovery; rendering takes them as given)."""

    pod_disruption_budget: str = "policy/v1"  # policy/v1beta1 before Kubernetes 1.21


NEWEST_APIS = ServedApis()  # what `lorafuse render` assumes: no cluster to ask


# Every pod runs under the "restricted" Pod Security Standard as the images' user 10001.
# fsGroup makes a root-owned volume (a fresh PV) writable for it: the kubelet gives the
# volume that group. runAsGroup too: images default to gid 0.
RUN_AS = 10001
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_security_context() -> dict[str, Any]:
    return {**POD_SECURITY_CONTEXT, "seccompProfile": dict(POD_SECURITY_CONTEXT["seccompProfile"])}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def hub_token_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """HF_TOKEN from spec.credentials (the one Secret an MD names for the hub), if any."""
    if spec.credentials is None:
        return []
    ref = {"name": spec.credentials.secret_name, "key": spec.credentials.key}
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}}]


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


def _sources(spec: ModelDeploymentSpec) -> list[str]:
    return [spec.base.source, *(a.source for a in spec.adapters)]


def source_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The claims of pvc:// sources, read-only at /sources/CLAIM (Job steps and vLLM)."""
    return [
        {
            "name": f"source-{index}",
            "mountPath": f"{naming.SOURCES_MOUNT}/{claim}",
            "readOnly": True,
        }
        for index, claim in enumerate(naming.source_claims(_sources(spec)))
    ]


def source_volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    return [
        {"name": f"source-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for index, claim in enumerate(naming.source_claims(_sources(spec)))
    ]
