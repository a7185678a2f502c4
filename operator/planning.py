"""ModelDeployment spec → MergePlan, by the pipeline's translation (`lorafuse run` uses it too)."""

from __future__ import annotations

from lorafuse.merger.pipeline.manifest import plan_from_spec
from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator import naming
from lorafuse.operator.spec import ModelDeploymentSpec


def plan_for(spec: ModelDeploymentSpec) -> MergePlan:
    """Eval and calibration ConfigMap keys become /inputs/KIND/KEY, where the Job mounts them."""
    raw = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return plan_from_spec(raw, artifact_root=naming.ARTIFACT_ROOT)


def plan_hash(plan: MergePlan) -> str:
    return plan.content_hash()[:16]
