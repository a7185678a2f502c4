"""Names, labels and in-pod paths of a ModelDeployment's children (one place, so they agree)."""

from __future__ import annotations

import hashlib
import re

from lorafuse import __version__

FIELD_MANAGER = "lorafuse-operator"
MANAGED_BY = "lorafuse"
LABEL_DEPLOYMENT = "lorafuse.dev/deployment"
LABEL_COMPONENT = "lorafuse.dev/component"
LABEL_PLAN = "lorafuse.dev/plan"
ANNOTATION_DIGEST = "lorafuse.dev/artifact-digest"
ANNOTATION_RETRY = "lorafuse.dev/retry"  # on a ModelDeployment: a new value re-runs a failed plan
ANNOTATION_ATTEMPT = "lorafuse.dev/attempt"  # on a Job: retries after transient failures
ANNOTATION_OWNER = "lorafuse.dev/owner"  # on pods: the ModelDeployment (labels may be cut)
PEERING_NAME = "lorafuse"  # kopf's peering object for leader election

# Where things are inside pods.
MODELS_MOUNT = "/models"
ARTIFACT_ROOT = f"{MODELS_MOUNT}/artifacts"
WORK_ROOT = f"{MODELS_MOUNT}/work"
HF_CACHE = f"{MODELS_MOUNT}/hf"
SERVING_CACHE_MOUNT = "/cache"  # adapter-mode serving pods: a writable emptyDir
SERVING_HF_CACHE = f"{SERVING_CACHE_MOUNT}/hf"
SOURCES_MOUNT = "/sources"  # pvc://claim/path -> /sources/claim/path
INPUTS_MOUNT = "/inputs"  # eval and calibration files from ConfigMaps (see merge_plan.py)
PLAN_MOUNT = "/plan"
PLAN_FILE = f"{PLAN_MOUNT}/plan.json"
TERMINATION_LOG = "/dev/termination-log"

DEFAULT_MERGER_IMAGE = f"ghcr.io/lorafuse/merger:{__version__}"
DEFAULT_OPERATOR_IMAGE = f"ghcr.io/lorafuse/operator:{__version__}"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"  # spec.serving.image's default

MAX_NAME = 63


def fit(name: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """`name` + `suffix` cut to `limit` characters; a cut name gets a short hash to stay unique."""
    if len(name) + len(suffix) <= limit:
        return name + suffix
    tag = hashlib.sha256(name.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(tag) - 1
    return f"{name[:keep].rstrip('-.')}-{tag}{suffix}"


def deployment_name(owner: str) -> str:
    return fit(owner, "-vllm")


def service_name(owner: str) -> str:
    return fit(owner)


def claim_name(owner: str) -> str:
    return fit(owner, "-models")


def job_name(owner: str, plan_hash: str) -> str:
    # The Job's name is also a label value on its pods, hence 63 characters at most.
    return fit(owner, f"-merge-{plan_hash[:10]}")


def fetch_job_name(owner: str, plan_hash: str) -> str:
    """Adapter mode's Job that runs only the plan's fetch step (hf:// sources to commits)."""
    return fit(owner, f"-fetch-{plan_hash[:10]}")


def plan_config_map_name(owner: str, plan_hash: str) -> str:
    return fit(owner, f"-plan-{plan_hash[:10]}")


def labels(owner: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lorafuse",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": component,
        LABEL_DEPLOYMENT: label_value(owner),
        LABEL_COMPONENT: component,
    }


def selector(owner: str, component: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: label_value(owner), LABEL_COMPONENT: component}


def label_selector(labels: dict[str, str]) -> str:
    """Labels as the API's `labelSelector` string (sorted: the same labels, the same text)."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def label_value(text: str) -> str:
    return fit(re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-_."))


def source_path(source: str) -> str:
    """Where a /path or pvc:// source is inside pods; hf:// sources stay hub ids."""
    if source.startswith("pvc://"):
        return f"{SOURCES_MOUNT}/{source.removeprefix('pvc://')}"
    return source


def adapter_cache_path(source: str) -> str:
    """Where an adapter-mode serving pod keeps an hf:// adapter, fetched at its revision."""
    repo, revision = serving_ref(source)
    return f"{SERVING_CACHE_MOUNT}/adapters/{repo.replace('/', '--')}--{revision or 'main'}"


def source_claims(sources: list[str]) -> list[str]:
    """The PersistentVolumeClaims the pvc:// sources live on, in order, without repeats."""
    claims = [s.removeprefix("pvc://").split("/", 1)[0] for s in sources if s.startswith("pvc://")]
    return list(dict.fromkeys(claims))


def serving_ref(source: str) -> tuple[str, str | None]:
    """What vLLM gets for a source: a path in the pod, or a hub id and its revision."""
    if source.startswith("hf://"):
        repo, _, revision = source.removeprefix("hf://").partition("@")
        return repo, revision or None
    return source_path(source), None
