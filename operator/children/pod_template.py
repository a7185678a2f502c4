"""spec.*.podTemplate merged over a rendered pod template; what the operator owns stays."""

from __future__ import annotations

from typing import Any

from lorafuse.operator.spec import PodTemplateSpec

# podTemplate field -> the PodSpec field it sets; nothing else of the pod is the user's.
POD_SPEC_FIELDS = {
    "affinity": "affinity",
    "topology_spread_constraints": "topologySpreadConstraints",
    "priority_class_name": "priorityClassName",
    "image_pull_secrets": "imagePullSecrets",
    "service_account_name": "serviceAccountName",
    "runtime_class_name": "runtimeClassName",
}


def with_pod_template(template: dict[str, Any], extra: PodTemplateSpec) -> dict[str, Any]:
    """`template` (metadata + spec of a Deployment's or Job's pods) with the user's fields
    added; the operator's labels and annotations win over the user's of the same key (the
    admin policy refuses those keys before anything is applied)."""
    meta = template["metadata"]
    meta["labels"] = {**extra.labels, **meta.get("labels", {})}
    if extra.annotations:
        meta["annotations"] = {**extra.annotations, **meta.get("annotations", {})}
    for name, pod_field in POD_SPEC_FIELDS.items():
        value = getattr(extra, name)
        if value:
            template["spec"][pod_field] = _plain(value)
    return template


def _plain(value: Any) -> Any:
    """Models to wire dicts (imagePullSecrets), free-form values copied."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
