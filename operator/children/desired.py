"""The one list of objects a ModelDeployment should have now (`lorafuse render`, reconcile)."""

from __future__ import annotations

from typing import Any

from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator.children.common import Images, Owner
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.job import merge_job, plan_config_map
from lorafuse.operator.children.service import service
from lorafuse.operator.children.storage import persistent_volume_claim
from lorafuse.operator.merge_plan import plan_hash
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.spec import ModelDeploymentSpec


def desired_objects(
    owner: Owner,
    spec: ModelDeploymentSpec,
    plan: MergePlan,
    images: Images,
    *,
    merge: bool,
    serving: ServingTarget | None,
) -> list[dict[str, Any]]:
    """The volume; the plan ConfigMap and merge Job if `merge`; the Deployment and Service
    if there is something to serve. In apply order: what a later object uses comes first."""
    objects = [persistent_volume_claim(owner, spec)]
    if merge:
        current = plan_hash(plan)
        objects.append(plan_config_map(owner, plan, current))
        objects.append(merge_job(owner, spec, plan, current, images))
    if serving is not None:
        objects += [serving_deployment(owner, spec, serving, images), service(owner, spec)]
    return [obj for obj in objects if obj is not None]
