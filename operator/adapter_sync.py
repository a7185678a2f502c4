"""Adapter mode without restarts: load and unload LoRA adapters in each ready serving pod."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lorafuse.operator import naming
from lorafuse.operator.children.adapters import runtime_adapters, wanted_adapters
from lorafuse.operator.children.common import Owner
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.spec import ModelDeploymentSpec, PodAdaptersStatus, ServingStatus
from lorafuse.serving.lora_runtime import LoraRuntime, LoraRuntimeError

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0  # a pod whose adapters could not be brought in line is tried again then


@dataclass(frozen=True)
class AdapterChanges:
    """What one pod must load, load in place (same name, other path) and unload."""

    load: tuple[tuple[str, str], ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    unload: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.load or self.replace or self.unload)


def changes(wanted: Mapping[str, str], loaded: Mapping[str, str]) -> AdapterChanges:
    """From what a pod serves (name -> path) to what it should serve; pure."""
    return AdapterChanges(
        load=tuple((n, p) for n, p in sorted(wanted.items()) if n not in loaded),
        replace=tuple((n, p) for n, p in sorted(wanted.items()) if n in loaded and loaded[n] != p),
        unload=tuple(sorted(n for n in loaded if n not in wanted)),
    )


def apply_changes(runtime: LoraRuntime, todo: AdapterChanges) -> list[str]:
    """New adapters first and removals last, so renames never leave a gap; every call is
    tried, and the failures come back as one-line messages."""
    calls = [(name, path, False) for name, path in todo.load]
    calls += [(name, path, True) for name, path in todo.replace]
    failures = []
    for name, path, in_place in calls:
        try:
            runtime.load(name, path, replace=in_place)
        except LoraRuntimeError as exc:
            failures.append(str(exc))
    for name in todo.unload:
        try:
            runtime.unload(name)
        except LoraRuntimeError as exc:
            failures.append(str(exc))
    return failures


@dataclass(frozen=True)
class ServingPod:
    """A ready adapter-mode serving pod and where its vLLM answers (pod IP, container port)."""

    name: str
    url: str


def pod_url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def ready_adapter_pods(pods: list[Any], port: int) -> list[ServingPod]:
    """The pods (kubernetes client objects) that serve in adapter mode and are Ready now."""
    found = []
    for pod in pods:
        annotations = pod.metadata.annotations or {}
        if annotations.get("lorafuse.dev/serving-mode") != "adapter":
            continue
        if pod.metadata.deletion_timestamp is not None or not (pod.status and pod.status.pod_ip):
            continue
        conditions = pod.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            found.append(ServingPod(pod.metadata.name, pod_url(pod.status.pod_ip, port)))
    return sorted(found, key=lambda p: p.name)


def sync_pod(
    pod: ServingPod,
    wanted: Mapping[str, str],
    previous: PodAdaptersStatus | None,
    runtime: LoraRuntime,
) -> PodAdaptersStatus:
    """Bring one pod's adapters in line with `wanted`; what it serves afterwards."""
    try:
        loaded = runtime.loaded()
        todo = changes(wanted, loaded)
        failures = [] if todo.empty else apply_changes(runtime, todo)
        if not todo.empty:
            log.info(
                "pod %s: loaded %s, replaced %s, unloaded %s",
                pod.name,
                [n for n, _ in todo.load],
                [n for n, _ in todo.replace],
                list(todo.unload),
            )
            loaded = runtime.loaded()
    except LoraRuntimeError as exc:
        kept = previous.adapters if previous else []
        return PodAdaptersStatus(name=pod.name, adapters=kept, message=str(exc))
    message = "; ".join(failures)[:1000] if failures else None
    return PodAdaptersStatus(name=pod.name, adapters=sorted(loaded), message=message)


@dataclass(frozen=True)
class AdapterSync:
    """Each ready pod's adapters after a sync, and when to look again (None: no need)."""

    pods: list[PodAdaptersStatus] | None = None  # None: not adapter mode with runtime adapters
    retry_after: float | None = None

    def into(self, serving: ServingStatus | None) -> ServingStatus | None:
        if serving is None or self.pods is None:
            return serving
        return serving.model_copy(update={"pods": self.pods})


ListPods = Callable[[str, str], list[Any]]  # (namespace, label selector) -> pods
RuntimeFor = Callable[[str], LoraRuntime]


def pod_lister(core: Any) -> ListPods:
    """Pods by label selector through a kubernetes CoreV1Api."""
    return lambda namespace, selector: (
        core.list_namespaced_pod(namespace, label_selector=selector).items
    )


def sync_adapters(
    list_pods: ListPods,
    owner: Owner,
    spec: ModelDeploymentSpec,
    target: ServingTarget | None,
    previous: ServingStatus | None,
    runtime_for: RuntimeFor = LoraRuntime,
) -> AdapterSync:
    """Every ready adapter-mode pod of `owner` serves spec.adapters, without a restart."""
    if target is None or not runtime_adapters(spec, target):
        return AdapterSync()
    selector = naming.label_selector(naming.selector(owner.name, "serving"))
    before = {p.name: p for p in (previous.pods or [])} if previous else {}
    wanted = wanted_adapters(owner.name, spec)
    pods = [
        sync_pod(pod, wanted, before.get(pod.name), runtime_for(pod.url))
        for pod in ready_adapter_pods(list_pods(owner.namespace, selector), spec.serving.port)
    ]
    retry = RETRY_SECONDS if any(p.message for p in pods) else None
    return AdapterSync(pods=pods, retry_after=retry)
