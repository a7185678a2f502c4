"""A stand-in node: registers a Node, schedules pods onto it and runs them as local processes."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from .images import ImageTable
from .nodeapi import NodeApi
from .pods import NodeServices, PodRunner, RunnerIndex
from .podspec import pod_requests
from .processes import Spawner
from .volumes import MountPoints, claim_path

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
TERMINAL_PHASES = ("Succeeded", "Failed")
WATCH_SECONDS = 5


def _selector_matches(pod: dict, labels: Mapping[str, str]) -> bool:
    """nodeSelector and required node affinity (matchExpressions on labels)."""
    spec = pod["spec"]
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not affinity:
        return True
    return any(_term_matches(term, labels) for term in affinity.get("nodeSelectorTerms") or [])


def _term_matches(term: dict, labels: Mapping[str, str]) -> bool:
    for expr in term.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "Gt": key in labels and int(labels[key]) > int(values[0]),
            "Lt": key in labels and int(labels[key]) < int(values[0]),
        }[op]
        if not ok:
            return False
    return True


class Node:
    """A kubelet stand-in for tests: one Node object, pods in served namespaces run locally.

    There is no scheduler in the test cluster: the node binds unscheduled pods of the
    namespaces it serves itself, when their requests fit its allocatable resources.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        workdir: Path,
        apiserver_port: int,
        name: str = "test-node",
        capacity: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        restart_backoff: tuple[float, float] = (10.0, 300.0),
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.api = NodeApi(api_client)
        self.images = ImageTable()
        self.capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(labels or {}),
        }
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pods: dict[str, dict] = {}  # uid -> latest pod seen
        self._served: set[str] = set()
        self._draining: set[str] = set()
        self._unschedulable: dict[str, str] = {}  # uid -> message last reported
        self._schedule = threading.Event()
        self._synced = threading.Event()
        self.runners = RunnerIndex()
        self.spawner = Spawner()
        self.services = NodeServices(
            api=self.api,
            images=self.images,
            spawner=self.spawner,
            mount_points=MountPoints(),
            claims_root=workdir / "claims",
            base_env={
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "HOME": os.environ.get("HOME", "/root"),
                "LANG": "C.UTF-8",
                # In-cluster clients find the API server through these, as in a real pod.
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(apiserver_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(apiserver_port),
            },
            restart_backoff=restart_backoff,
            on_finished=self._on_runner_finished,
        )
        self._threads = [
            threading.Thread(target=self._watch_loop, name="node-watch", daemon=True),
            threading.Thread(target=self._schedule_loop, name="node-scheduler", daemon=True),
        ]

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if not shutil.which("unshare"):
            raise RuntimeError("the test node needs `unshare` (util-linux) to mount volumes")
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self.api.register_node(self._node_object())
        for thread in self._threads:
            thread.start()
        if not self._synced.wait(30):
            raise RuntimeError("the test node could not list pods")

    def stop(self, grace: float = 5.0) -> None:
        """Kill every pod process (TERM, `grace` s, KILL), stop the loops, delete the Node."""
        self._stop.set()
        self._schedule.set()
        with self._lock:
            runners = list(self.runners.by_uid.values())
        for runner in runners:
            runner.terminate(grace)
        for runner in runners:
            runner.wait_finished(grace + 30)
        self.api.stop_watch()
        for thread in self._threads:
            thread.join(WATCH_SECONDS + 15)
        self.spawner.close()
        try:
            self.api.delete_node(self.name)
        except Exception as exc:  # the API server may already be gone
            log.warning("deleting node %s: %s", self.name, exc)

    def _node_object(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "status": self._node_status(),
        }

    def _node_status(self) -> dict:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def condition(kind: str, ok: bool, reason: str) -> dict:
            return {
                "type": kind,
                "status": "True" if ok else "False",
                "reason": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": dict(self.capacity),
            "allocatable": dict(self.capacity),
            "conditions": [
                condition("Ready", True, "KubeletReady"),
                condition("MemoryPressure", False, "KubeletHasSufficientMemory"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure"),
                condition("PIDPressure", False, "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "containerRuntimeVersion": "lorafuse-test-node://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "lorafuse test node",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def set_capacity(self, **resources: str) -> None:
        """Change capacity (= allocatable), e.g. set_capacity(**{"nvidia.com/gpu": "2"})."""
        self.replace_capacity({**self.capacity, **resources})

    def replace_capacity(self, capacity: Mapping[str, str]) -> None:
        """Make `capacity` the node's whole capacity (= allocatable)."""
        with self._lock:
            removed = set(self.capacity) - set(capacity)
            self.capacity = dict(capacity)
            status = self._node_status()
        for key in removed:  # merge patch: null deletes a map key
            status["capacity"][key] = status["allocatable"][key] = None
        self.api.patch_node_status(self.name, status)
        self._schedule.set()

    # -- namespaces ------------------------------------------------------------------

    def serve(self, namespace: str) -> None:
        """Run the pods of `namespace` (binding its unscheduled pods to this node)."""
        with self._lock:
            self._served.add(namespace)
            self._draining.discard(namespace)
            pods = [p for p in self._pods.values() if p["metadata"]["namespace"] == namespace]
        for pod in pods:
            self._reconcile(pod)
        self._schedule.set()

    def drain(self, namespace: str, timeout: float = 60.0) -> None:
        """Delete the namespace's pods gracefully, wait until they are gone, stop serving it."""
        with self._lock:
            if namespace not in self._served:
                return
            self._draining.add(namespace)
        try:
            self.api.delete_pods(namespace)
        except ApiException as exc:
            log.warning("deleting pods of %s: %s", namespace, exc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._bound_pods(namespace):
            time.sleep(0.2)
        with self._lock:
            leftovers = [r for r in self.runners.by_uid.values() if r.namespace == namespace]
            self._served.discard(namespace)
            self._draining.discard(namespace)
        for runner in leftovers:
            runner.terminate(0)
        for runner in leftovers:
            runner.wait_finished(30)
            self.api.delete_pod_now(runner.namespace, runner.name, runner.uid)

    def _bound_pods(self, namespace: str) -> list[dict]:
        with self._lock:
            return [
                p
                for p in self._pods.values()
                if p["metadata"]["namespace"] == namespace
                and p["spec"].get("nodeName") == self.name
            ]

    # -- access for tests ------------------------------------------------------------

    def runner(self, pod: str | dict, namespace: str | None = None) -> PodRunner:
        """The runner of a pod given by name (newest of that name) or as an object."""
        if not isinstance(pod, str):
            meta = pod["metadata"] if isinstance(pod, dict) else pod.metadata
            name = meta["name"] if isinstance(meta, dict) else meta.name
            namespace = meta["namespace"] if isinstance(meta, dict) else meta.namespace
            pod = name
        with self._lock:
            return self.runners.find(pod, namespace)

    def port_for(self, pod: str | dict, container_port: int, namespace: str | None = None) -> int:
        """Host port on 127.0.0.1 that stands for the pod's `container_port`."""
        return self.runner(pod, namespace).port_for(container_port)

    def log_path(
        self,
        pod: str | dict,
        container: str | None = None,
        namespace: str | None = None,
        previous: bool = False,
    ) -> Path:
        runner = self.runner(pod, namespace)
        record = runner.record(container or runner.containers[0].name)
        run = record.restart_count - 1 if previous else record.restart_count
        return record.log_file(run)

    def logs(
        self,
        pod: str | dict,
        container: str | None = None,
        namespace: str | None = None,
        previous: bool = False,
    ) -> str:
        """stdout+stderr of a container's current (or previous) run, like `kubectl logs`."""
        path = self.log_path(pod, container, namespace, previous)
        return path.read_text(errors="replace") if path.exists() else ""

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Host folder backing a PersistentVolumeClaim (created; fill it before pods start)."""
        path = claim_path(self.services.claims_root, namespace, claim)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- watching --------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                items, version = self.api.list_pods()
                with self._lock:
                    self._pods = {p["metadata"]["uid"]: p for p in items}
                for pod in items:
                    self._reconcile(pod)
                self._synced.set()
                self._schedule.set()
                self._follow(version)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("node watch: %s; relisting", exc)
                    self._stop.wait(1)

    def _follow(self, version: str) -> None:
        """Apply watch events from `version` on, until the stop flag or a 410 (relist)."""
        while not self._stop.is_set():
            for event in self.api.watch_pods(version, WATCH_SECONDS):
                pod = event["object"]
                version = pod["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                self._apply(event["type"], pod)
                if self._stop.is_set():
                    return

    def _apply(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            with self._lock:
                self._pods.pop(uid, None)
                runner = self.runners.by_uid.get(uid)
            if runner:
                runner.terminate(0)
            self._schedule.set()
            return
        with self._lock:
            self._pods[uid] = pod
        self._reconcile(pod)

    def _reconcile(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        with self._lock:
            if meta["namespace"] not in self._served:
                return
            if not spec.get("nodeName"):
                self._schedule.set()
                return
            if spec["nodeName"] != self.name:
                return
            runner = self.runners.by_uid.get(meta["uid"])
            if meta.get("deletionTimestamp"):
                self._delete(pod, runner)
                return
            phase = (pod.get("status") or {}).get("phase")
            if runner or phase in TERMINAL_PHASES or meta["namespace"] in self._draining:
                return
            runner = PodRunner(self.services, pod, self.workdir / "pods")
            self.runners.by_uid[meta["uid"]] = runner
        runner.start()

    def _delete(self, pod: dict, runner: PodRunner | None) -> None:
        meta = pod["metadata"]
        if runner is None or runner.finished.is_set():
            threading.Thread(
                target=self.api.delete_pod_now,
                args=(meta["namespace"], meta["name"], meta["uid"]),
                daemon=True,
            ).start()
            return
        runner.terminate(float(meta.get("deletionGracePeriodSeconds") or 0))

    def _on_runner_finished(self, runner: PodRunner) -> None:
        with self._lock:
            pod = self._pods.get(runner.uid)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            self.api.delete_pod_now(runner.namespace, runner.name, runner.uid)
        self._schedule.set()

    # -- scheduling ------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            self._schedule.wait(1.0)
            self._schedule.clear()
            if self._stop.is_set():
                return
            try:
                self._schedule_pending()
            except Exception as exc:
                log.warning("node scheduler: %s", exc)

    def _schedule_pending(self) -> None:
        with self._lock:
            pending = sorted(
                (
                    p
                    for p in self._pods.values()
                    if not p["spec"].get("nodeName")
                    and not p["metadata"].get("deletionTimestamp")
                    and p["metadata"]["namespace"] in self._served - self._draining
                ),
                key=lambda p: p["metadata"]["creationTimestamp"],
            )
        for pod in pending:
            problem = self._fit_problem(pod)
            if problem:
                self._report_unschedulable(pod, problem)
                continue
            meta = pod["metadata"]
            try:
                self.api.bind(meta["namespace"], meta["name"], meta["uid"], self.name)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], exc)
                continue
            with self._lock:
                # Count it as bound right away, before the watch event arrives.
                pod["spec"]["nodeName"] = self.name
                self._unschedulable.pop(meta["uid"], None)

    def _fit_problem(self, pod: dict) -> str:
        if not _selector_matches(pod, self.labels):
            return "0/1 nodes are available: 1 node(s) didn't match node selector."
        with self._lock:
            bound = [
                p
                for p in self._pods.values()
                if p["spec"].get("nodeName") == self.name
                and (p.get("status") or {}).get("phase") not in TERMINAL_PHASES
            ]
            capacity = dict(self.capacity)
        wanted = pod_requests(pod)
        if len(bound) + 1 > int(capacity.get("pods", "110")):
            return "0/1 nodes are available: 1 Too many pods."
        used: dict[str, Decimal] = {}
        for other in bound:
            for name, value in pod_requests(other).items():
                used[name] = used.get(name, Decimal(0)) + value
        short = [
            name
            for name, value in sorted(wanted.items())
            if value > 0
            and used.get(name, Decimal(0)) + value
            > Decimal(parse_quantity(capacity.get(name, "0")))
        ]
        if short:
            return (
                "0/1 nodes are available: " + ", ".join(f"1 Insufficient {n}" for n in short) + "."
            )
        return ""

    def _report_unschedulable(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        if self._unschedulable.get(meta["uid"]) == message:
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            self.api.patch_pod_status(
                meta["namespace"], meta["name"], {"phase": "Pending", "conditions": [condition]}
            )
            self._unschedulable[meta["uid"]] = message
        except ApiException as exc:
            if exc.status != 404:
                log.warning(
                    "reporting %s/%s unschedulable: %s", meta["namespace"], meta["name"], exc
                )
