"""kopf wiring: watch ModelDeployments and their children, and reconcile the owner on any change.

Only event handlers are used: they keep no state on the resource and need no finalizer
(children go with their owner through owner references and the garbage collector).
A Job's pods, the Job and the Deployment change as the merge and the rollout progress,
so their events drive the reconcile forward without polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from lorafuse.operator import naming
from lorafuse.operator.crd import PEERING_GROUP
from lorafuse.operator.reconcile import Reconciler
from lorafuse.operator.spec import GROUP, KIND, PLURAL, VERSION
from lorafuse.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Controller:
    """Turns watch events into reconciles of the owning ModelDeployment."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.queue: WorkQueue | None = None

    def kick(self, namespace: str | None, name: str | None) -> None:
        if not namespace or not name:
            return
        if self.queue is None:
            self.queue = WorkQueue(self._work)
        self.queue.kick((namespace, name))

    async def _work(self, key: Hashable) -> None:
        namespace, name = key  # type: ignore[misc]
        requeue_after = await asyncio.to_thread(self.reconcile_now, namespace, name)
        if requeue_after is not None and self.queue is not None:
            self.queue.kick_later(key, requeue_after)

    def reconcile_now(self, namespace: str, name: str) -> float | None:
        kube = self.reconciler.kube
        body = kube.get_model_deployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.reconciler.metrics.forget(namespace, name)
            return None
        return self.reconciler.reconcile(body, lambda *event: kube.post_event(body, *event))


def owner_name(body: kopf.Body) -> str | None:
    """The ModelDeployment a child belongs to: its owner reference or, on pods, an annotation."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref.get("name")
    return body.metadata.annotations.get(naming.ANNOTATION_OWNER)


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    managed = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}

    @kopf.on.event(GROUP, VERSION, PLURAL, id="modeldeployments-changed", registry=registry)
    async def model_deployment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            controller.reconciler.metrics.forget(body.metadata.namespace, body.metadata.name)
            return
        controller.kick(body.metadata.namespace, body.metadata.name)

    for group, version, plural in (
        ("batch", "v1", "jobs"),
        ("apps", "v1", "deployments"),
    ):

        @kopf.on.event(
            group, version, plural, labels=managed, id=f"{plural}-changed", registry=registry
        )
        async def child_changed(body: kopf.Body, **_: Any) -> None:
            controller.kick(body.metadata.namespace, owner_name(body))

    # Merge pods show a step's progress; serving pods a failed artifact check (self-heal).
    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry)
    async def pod_changed(body: kopf.Body, **_: Any) -> None:
        controller.kick(body.metadata.namespace, owner_name(body))


# Server-side filters of the child watches: the API server sends only lorafuse's objects, not
# every Pod, Job and Deployment of the cluster (kopf's handler labels filter client-side).
CHILD_SELECTORS = {
    ("batch", "v1", "jobs"): f"app.kubernetes.io/managed-by={naming.MANAGED_BY}",
    ("apps", "v1", "deployments"): f"app.kubernetes.io/managed-by={naming.MANAGED_BY}",
    ("", "v1", "pods"): f"app.kubernetes.io/managed-by={naming.MANAGED_BY}",
}


def configure_settings(settings: kopf.OperatorSettings, priority: int, clusterwide: bool) -> None:
    for resource, selector in CHILD_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector
    settings.peering.name = naming.PEERING_NAME
    settings.peering.priority = priority
    settings.peering.clusterwide = clusterwide
    # Cluster-wide scanning for CRDs and namespaces needs rights the operator does not have.
    settings.scanning.disabled = True
    # Events are posted by the reconcile itself, one per transition, not per log line.
    settings.posting.enabled = False


def ensure_peering(kube: Any, namespaces: list[str], clusterwide: bool) -> None:
    """Create the peering object(s) kopf's leader election keeps its heartbeats in."""
    body = {"apiVersion": f"{PEERING_GROUP}/v1", "metadata": {"name": naming.PEERING_NAME}}
    targets = [None] if clusterwide else namespaces
    for namespace in targets:
        try:
            if namespace is None:
                kube.custom.create_cluster_custom_object(
                    PEERING_GROUP,
                    "v1",
                    "clusterkopfpeerings",
                    {**body, "kind": "ClusterKopfPeering"},
                )
            else:
                kube.custom.create_namespaced_custom_object(
                    PEERING_GROUP, "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"}
                )
        except ApiException as exc:
            if exc.status != 409:
                raise
