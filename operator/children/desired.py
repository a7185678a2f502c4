"""The one list of objects a ModelDeployment should have now (`lorafuse render`, reconcile)."""

from __future__ import annotations

from typing import Any

from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator import naming
from lorafuse.operator.children.adapters import adapters_config_map
from lorafuse.operator.children.autoscaler import HPA_API_VERSION, horizontal_pod_autoscaler
from lorafuse.operator.children.common import NEWEST_APIS, Images, Owner, ServedApis
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.disruption import pod_disruption_budget
from lorafuse.operator.children.ingress import INGRESS_API_VERSION, ingress
from lorafuse.operator.children.job import fetch_job, merge_job, plan_config_map
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
    apis: ServedApis = NEWEST_APIS,
    fetch: bool = False,
) -> list[dict[str, Any]]:
    """The volume; the plan ConfigMap and merge Job if `merge` (the fetch-only Job if
    `fetch`); the Deployment and Service if there is something to serve. In apply order:
    what a later object uses comes first."""
    objects = [persistent_volume_claim(owner, spec)]
    if merge or fetch:
        current = plan_hash(plan)
        objects.append(plan_config_map(owner, plan, current))
        job = merge_job if merge else fetch_job
        objects.append(job(owner, spec, plan, current, images))
    if serving is not None:
        objects.append(adapters_config_map(owner, spec, serving))
        objects += [serving_deployment(owner, spec, serving, images), service(owner, spec)]
        objects.append(horizontal_pod_autoscaler(owner, spec))
        objects.append(pod_disruption_budget(owner, spec, apis))
        objects.append(ingress(owner, spec))
    return [obj for obj in objects if obj is not None]


def unwanted_children(
    owner: Owner, spec: ModelDeploymentSpec, apis: ServedApis = NEWEST_APIS, *,
    serving: bool = True,
) -> list[tuple[str, str, str]]:
    """(kind, apiVersion, name) of the optional children the spec has turned off; with
    `serving` false (a GGUF artifact for download), all of them."""
    name = naming.deployment_name(owner.name)
    unwanted = []
    if not serving or horizontal_pod_autoscaler(owner, spec) is None:
        unwanted.append(("HorizontalPodAutoscaler", HPA_API_VERSION, name))
    if not serving or pod_disruption_budget(owner, spec, apis) is None:
        unwanted.append(("PodDisruptionBudget", apis.pod_disruption_budget, name))
    if not serving or ingress(owner, spec) is None:
        unwanted.append(("Ingress", INGRESS_API_VERSION, naming.service_name(owner.name)))
    return unwanted
