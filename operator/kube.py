"""Thin calls on the official Kubernetes client: server-side apply, reads, the Job's result."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lorafuse.merger.pipeline.result import JobResult, parse_result
from lorafuse.operator import naming
from lorafuse.operator.children.common import ServedApis
from lorafuse.operator.lifecycle import JobObservation, Rollout
from lorafuse.operator.spec import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
# kind -> (API group, resource) of every child the operator applies (RBAC is checked against it).
APPLIED = {
    "ConfigMap": ("", "configmaps"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
    "Service": ("", "services"),
    "Deployment": ("apps", "deployments"),
    "Job": ("batch", "jobs"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "Ingress": ("networking.k8s.io", "ingresses"),
}
# Keeps a Deployment's replicas when the operator hands them to an autoscaler.
REPLICAS_HANDOVER = "lorafuse-replicas-handover"
# Scales the serving Deployment to 0 when nothing is to be served (operator/download.py).
NOT_SERVING = "lorafuse-not-serving"
# Kinds whose served versions differ between Kubernetes releases (autoscaling/v2beta2 and
# policy/v1beta1 are gone from newer clients): applied through the generic object calls.
VERSIONED = ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress")


@dataclass
class Kube:
    """The API calls reconcile makes, on one ApiClient."""

    api: client.ApiClient
    _served: ServedApis | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # --- writes -------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply under the operator's field manager; fields it dropped are removed."""
        meta = obj["metadata"]
        if obj["kind"] in VERSIONED:
            group, version = obj["apiVersion"].split("/")
            self.custom.patch_namespaced_custom_object(
                group,
                version,
                meta["namespace"],
                APPLIED[obj["kind"]][1],
                meta["name"],
                obj,
                field_manager=naming.FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )
            return
        patch = {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
            "Service": self.core.patch_namespaced_service,
            "Deployment": self.apps.patch_namespaced_deployment,
            "Job": self.batch.patch_namespaced_job,
        }[obj["kind"]]
        patch(
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=naming.FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def _deployment(self, namespace: str, name: str) -> Any | None:
        """The Deployment, or None when there is none."""
        try:
            return self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def release_replicas(self, namespace: str, name: str) -> bool:
        """Before the operator stops applying a Deployment's replicas (an autoscaler takes
        over), a second field manager applies the current count: a field its only manager
        drops is reset to the default, 1, which would scale serving down first."""
        existing = self._deployment(namespace, name)
        if existing is None:
            return False
        if not _applies_replicas(existing.metadata.managed_fields or []):
            return False
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": existing.spec.replicas},
        }
        self.apps.patch_namespaced_deployment(
            name, namespace, body, field_manager=REPLICAS_HANDOVER, _content_type=APPLY
        )
        return True

    def scale_to_zero(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Stops the pods of our serving Deployment when nothing is to be served (a GGUF
        artifact is for download). It is not deleted: the garbage collector removes it with
        its owner, and the operator's next apply of it takes its replicas back."""
        existing = self._deployment(namespace, name)
        if existing is None:
            return False
        refs = existing.metadata.owner_references or []
        if not any(ref.uid == owner_uid for ref in refs) or existing.spec.replicas == 0:
            return False
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0},
        }
        self.apps.patch_namespaced_deployment(
            name, namespace, body, field_manager=NOT_SERVING, force=True, _content_type=APPLY
        )
        return True

    def foreign(
        self, kind: str, namespace: str, name: str, owner_uid: str, api_version: str = ""
    ) -> str | None:
        """Why an existing object of this name is not ours to apply (None: absent or ours).
        Ours means an ownerReference with the ModelDeployment's UID."""
        refs = self._owner_refs(kind, namespace, name, api_version)
        if refs is None or any(ref["uid"] == owner_uid for ref in refs):
            return None
        owners = ", ".join(f"{ref['kind']}/{ref['name']}" for ref in refs) or "no owner"
        return f"{kind} {name} already exists ({owners}); it is left alone"

    def delete_if_ours(
        self, kind: str, namespace: str, name: str, owner_uid: str, api_version: str
    ) -> bool:
        """Removes an optional child the spec no longer asks for (never someone else's)."""
        refs = self._owner_refs(kind, namespace, name, api_version)
        if refs is None or not any(ref["uid"] == owner_uid for ref in refs):
            return False
        group, version = api_version.split("/")
        try:
            self.custom.delete_namespaced_custom_object(
                group, version, namespace, APPLIED[kind][1], name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        return True

    def _owner_refs(
        self, kind: str, namespace: str, name: str, api_version: str
    ) -> list[dict[str, Any]] | None:
        """The owner references of an existing object (None: there is none)."""
        if kind in VERSIONED:
            group, version = api_version.split("/")
            try:
                found = self.custom.get_namespaced_custom_object(
                    group, version, namespace, APPLIED[kind][1], name
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return list(found["metadata"].get("ownerReferences") or [])
        read = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "Service": self.core.read_namespaced_service,
            "Deployment": self.apps.read_namespaced_deployment,
            "Job": self.batch.read_namespaced_job,
        }[kind]
        try:
            existing = read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        refs = existing.metadata.owner_references or []
        return [{"uid": ref.uid, "kind": ref.kind, "name": ref.name} for ref in refs]

    def apply_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
            field_manager=naming.FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the ModelDeployment `involved` (kubectl describe shows them)."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": naming.FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:  # an event lost is no reason to fail the reconcile
            log.warning("could not post event %s: %s", reason, exc.reason)

    def delete_stale_merges(self, namespace: str, owner: str, keep_plan: str) -> list[str]:
        """Jobs and plan ConfigMaps of plans the spec no longer asks for."""
        deleted = []
        for component, lister, deleter in (
            ("merge", self.batch.list_namespaced_job, self.batch.delete_namespaced_job),
            ("plan", self.core.list_namespaced_config_map, self.core.delete_namespaced_config_map),
        ):
            selector = naming.label_selector(naming.selector(owner, component))
            for item in lister(namespace, label_selector=selector).items:
                if (item.metadata.labels or {}).get(naming.LABEL_PLAN) == keep_plan:
                    continue
                try:
                    deleter(item.metadata.name, namespace, propagation_policy="Background")
                    deleted.append(item.metadata.name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return deleted

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- reads --------------------------------------------------------------------------

    def served_apis(self) -> ServedApis:
        """The versions this API server serves (asked once: they change only on upgrade)."""
        if self._served is None:
            groups = client.ApisApi(self.api).get_api_versions().groups or []
            served = {v.group_version for g in groups for v in g.versions or []}
            pdb = "policy/v1" if "policy/v1" in served else "policy/v1beta1"
            self._served = ServedApis(pod_disruption_budget=pdb)
        return self._served

    def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def observe_job(self, namespace: str, name: str, plan_hash: str) -> JobObservation | None:
        try:
            job = self.batch.read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp, default=None)
        status = job.status
        failed = next(
            (c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None
        )
        annotations = job.metadata.annotations or {}
        started = {
            "retry": annotations.get(naming.ANNOTATION_RETRY),
            "attempt": _int(annotations.get(naming.ANNOTATION_ATTEMPT)),
            "sources": _fetched_sources(pod),
        }
        if status.succeeded:
            step, result = _finished_step(pod, failed=False)
            return JobObservation(
                name,
                plan_hash,
                "Succeeded",
                step,
                result,
                finished_at=status.completion_time,
                **started,
            )
        if failed is not None:
            step, result = _finished_step(pod, failed=True)
            return JobObservation(
                name,
                plan_hash,
                "Failed",
                step,
                result,
                _failure_reason(job.spec, status, failed),
                failed.message,
                finished_at=failed.last_transition_time,
                pod_reason=_pod_reason(pods),
                container_reason=_container_reason(pods),
                **started,
            )
        return JobObservation(name, plan_hash, "Running", _running_step(pod), **started)

    def job_duration(self, namespace: str, name: str) -> float | None:
        try:
            status = self.batch.read_namespaced_job(name, namespace).status
        except ApiException:
            return None
        end = status.completion_time or _failed_at(status)
        if status.start_time and end:
            return (end - status.start_time).total_seconds()
        return None

    def observe_rollout(self, namespace: str, name: str) -> Rollout:
        deployment = self._deployment(namespace, name)
        if deployment is None:
            return Rollout()
        status = deployment.status
        wanted = _serving_target(deployment.spec.template.metadata.annotations)
        selector = naming.label_selector(deployment.spec.selector.match_labels or {})
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        ready = [_serving_target(p.metadata.annotations) for p in pods if _pod_ready(p)]
        old = [target for target in ready if target != wanted]
        failed_at, message = _verify_failure(
            [p for p in pods if _serving_target(p.metadata.annotations) == wanted]
        )
        return Rollout(
            exists=True,
            replicas=deployment.spec.replicas or 0,
            total=status.replicas or 0,
            ready=status.ready_replicas or 0,
            updated=status.updated_replicas or 0,
            current=(status.observed_generation or 0) >= (deployment.metadata.generation or 0),
            ready_current=len(ready) - len(old),
            previous=" ".join(filter(None, old[-1])) if old else None,
            previous_ready=len(old),
            verify_failed_at=failed_at,
            verify_message=message,
        )


def _applies_replicas(managed_fields: list[Any]) -> bool:
    """Whether the operator's apply still owns spec.replicas."""
    return any(
        entry.manager == naming.FIELD_MANAGER
        and entry.operation == "Apply"
        and "f:replicas" in ((entry.fields_v1 or {}).get("f:spec") or {})
        for entry in managed_fields
    )


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _pod_reason(pods: list[Any]) -> str | None:
    """Why the kubelet or the node controller ended a pod: Evicted, NodeLost, ..."""
    return next((p.status.reason for p in pods if p.status and p.status.reason), None)


def _container_reason(pods: list[Any]) -> str | None:
    """The reason of a step that ended badly, e.g. OOMKilled."""
    for pod in pods:
        for container in _statuses(pod):
            done = container.state and container.state.terminated
            if done and done.exit_code != 0 and done.reason not in (None, "Error", "Completed"):
                return done.reason
    return None


def _serving_target(annotations: dict[str, str] | None) -> tuple[str, str]:
    """What a serving pod serves: its mode and, merged, the artifact's digest."""
    annotations = annotations or {}
    return (
        annotations.get("lorafuse.dev/serving-mode", ""),
        annotations.get(naming.ANNOTATION_DIGEST, ""),
    )


def _pod_ready(pod: Any) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    deleting = pod.metadata.deletion_timestamp is not None
    return not deleting and any(c.type == "Ready" and c.status == "True" for c in conditions)


def _verify_failure(pods: list[Any]) -> tuple[datetime | None, str | None]:
    """When the artifact check last failed in these pods, and what it said."""
    latest: tuple[datetime | None, str | None] = (None, None)
    for pod in pods:
        for container in (pod.status.init_container_statuses if pod.status else None) or []:
            if container.name != "verify":
                continue
            for state in (container.state, container.last_state):
                done = state and state.terminated
                failed = done and done.exit_code != 0 and done.finished_at
                if failed and (latest[0] is None or done.finished_at > latest[0]):
                    result = parse_result(done.message)
                    latest = (done.finished_at, result.message if result else None)
    return latest


def _statuses(pod: Any) -> list[Any]:
    if pod is None:
        return []
    return [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]


def _running_step(pod: Any) -> str | None:
    """The first step that has not finished well: the one running (or waiting to)."""
    for container in _statuses(pod):
        done = container.state and container.state.terminated
        if not done or done.exit_code != 0:
            return container.name
    return None


def _fetched_sources(pod: Any) -> tuple[tuple[str, str], ...]:
    """(hf:// source, commit) as the fetch step resolved them (its termination message)."""
    for container in _statuses(pod):
        done = container.state and container.state.terminated
        if container.name == "fetch" and done and done.exit_code == 0:
            result = parse_result(done.message)
            return tuple((s.source, s.commit) for s in (result.sources if result else None) or [])
    return ()


def _finished_step(pod: Any, failed: bool) -> tuple[str | None, JobResult | None]:
    """The step whose termination message is the Job's result: the failing one, or the last."""
    finished = [(c, c.state.terminated) for c in _statuses(pod) if c.state and c.state.terminated]
    if failed:
        finished = [(c, t) for c, t in finished if t.exit_code != 0]
    if not finished:
        return None, None
    container, terminated = finished[0] if failed else finished[-1]
    return container.name, parse_result(terminated.message)


def _failure_reason(spec: Any, status: Any, failed: Any) -> str | None:
    """The Job's failure reason, DeadlineExceeded for any Job that ran out its deadline.

    The Job controller kills the pods of a Job past its deadline; when it sees a killed pod
    fail before it records the deadline, it reports BackoffLimitExceeded instead.
    """
    allowed = spec.active_deadline_seconds
    start, end = status.start_time, failed.last_transition_time
    if allowed and start and end and (end - start).total_seconds() >= allowed:
        return "DeadlineExceeded"
    return failed.reason


def _failed_at(status: Any) -> datetime | None:
    for condition in status.conditions or []:
        if condition.type == "Failed" and condition.status == "True":
            return condition.last_transition_time
    return None
