"""One pod on the test node: volumes, init containers, containers, probes, restarts, status."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from .images import ContainerContext, ImageNotFound, ImageTable, Launch
from .nodeapi import NodeApi
from .podspec import ContainerConfigError, container_env, expand
from .probes import Prober, ProbeTarget
from .processes import ManagedProcess, Spawner, free_port
from .volumes import MountPoints, VolumeNotReady, VolumeSource, container_mounts, prepare_volumes

log = logging.getLogger(__name__)

MOUNTEXEC = Path(__file__).with_name("mountexec.py")
UNSHARE = shutil.which("unshare") or "unshare"
# The code that mapped images run (this checkout, the interpreter's prefix) stays visible
# in a container even when a pod mounts a volume over a parent of it, e.g. an emptyDir at /tmp
# while the checkout lives under /tmp.
KEEP_VISIBLE = sorted({str(Path(__file__).resolve().parents[2]), sys.prefix})
MESSAGE_LIMIT = 4096  # the kubelet's cap on a termination message
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
RETRY_SECONDS = 1.0


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeServices:
    """What every pod runner shares with its node."""

    api: NodeApi
    images: ImageTable
    spawner: Spawner
    mount_points: MountPoints
    claims_root: Path
    base_env: dict[str, str]
    restart_backoff: tuple[float, float]  # first delay, cap (seconds)
    on_finished: Callable[[PodRunner], None]


@dataclass
class ContainerRecord:
    """A container of the pod and what the node knows about its current and last run."""

    spec: dict
    init: bool
    directory: Path
    waiting: tuple[str, str] = ("ContainerCreating", "")
    running_since: str | None = None
    terminated: dict | None = None
    last_state: dict | None = None
    restart_count: int = 0
    started: bool = False
    ready: bool = False
    container_id: str = ""
    process: ManagedProcess | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    def log_file(self, run: int | None = None) -> Path:
        return self.directory / f"{self.restart_count if run is None else run}.log"

    def termination_file(self) -> Path:
        return self.directory / f"{self.restart_count}.termination-log"

    def state(self) -> dict:
        if self.terminated is not None:
            return {"terminated": self.terminated}
        if self.running_since is not None:
            return {"running": {"startedAt": self.running_since}}
        reason, message = self.waiting
        return {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def status(self) -> dict:
        status = {
            "name": self.name,
            "image": self.spec["image"],
            "imageID": f"lorafuse-test-node://{self.spec['image']}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "state": self.state(),
            "lastState": {"terminated": self.last_state} if self.last_state else {},
        }
        if not self.init:
            status["started"] = self.started
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict:
    condition = {"type": kind, "status": "True" if ok else "False"}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


class PodRunner:
    """Runs one bound pod as local processes and reports its status like a kubelet."""

    def __init__(self, services: NodeServices, pod: dict, pods_dir: Path) -> None:
        meta = pod["metadata"]
        self.services = services
        self.pod = pod
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.directory = pods_dir / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [self._record(c, True) for c in spec.get("initContainers") or []]
        self.containers = [self._record(c, False) for c in spec["containers"]]
        if self.init_containers:
            for record in self.containers:
                record.waiting = ("PodInitializing", "")
        self.created = time.monotonic()
        self.ports = self._allocate_ports()
        self.start_time = now_rfc3339()
        self.initialized = not self.init_containers
        self.failure: tuple[str, str] | None = None  # pod-level (reason, message)
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._grace: float | None = None
        self._lock = threading.RLock()
        self._changed = threading.Event()
        self._transitions: dict[str, tuple[tuple[str, str], str]] = {}
        self._last_status: dict | None = None
        self._volumes: dict[str, VolumeSource] = {}
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self._status_thread = threading.Thread(
            target=self._status_loop, name=f"status-{self.name}", daemon=True
        )

    # -- setup -----------------------------------------------------------------------

    def _record(self, spec: dict, init: bool) -> ContainerRecord:
        directory = self.directory / (f"init-{spec['name']}" if init else spec["name"])
        directory.mkdir(parents=True, exist_ok=True)
        return ContainerRecord(spec=spec, init=init, directory=directory)

    def _allocate_ports(self) -> dict[int, int]:
        """A free loopback port for every declared containerPort and numeric probe port."""
        wanted: set[int] = set()
        for record in self.init_containers + self.containers:
            wanted.update(p["containerPort"] for p in record.spec.get("ports") or [])
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = record.spec.get(kind) or {}
                for action in ("httpGet", "tcpSocket"):
                    port = (probe.get(action) or {}).get("port")
                    if isinstance(port, int):
                        wanted.add(port)
        return {port: free_port() for port in sorted(wanted)}

    def _port_of(self, container: dict) -> Callable[[int | str], int]:
        def port_of(port: int | str) -> int:
            if isinstance(port, str) and not port.isdigit():
                named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
                if port not in named:
                    raise ValueError(f"container {container['name']} has no port named {port!r}")
                port = named[port]
            return self.ports[int(port)]

        return port_of

    # -- public ----------------------------------------------------------------------

    def start(self) -> None:
        self._status_thread.start()
        self._thread.start()

    def port_for(self, container_port: int) -> int:
        return self.ports[container_port]

    def record(self, container: str) -> ContainerRecord:
        for record in self.init_containers + self.containers:
            if record.name == container:
                return record
        raise KeyError(f"pod {self.namespace}/{self.name} has no container {container!r}")

    def terminate(self, grace: float) -> None:
        """Stop the pod as for a graceful deletion: TERM, `grace` seconds, KILL."""
        with self._lock:
            if self._grace is not None and grace >= self._grace:
                return  # already stopping at least this fast
            self._grace = grace
            self.stopping.set()
        threading.Thread(target=self._kill_all, args=(grace,), daemon=True).start()
        self._changed.set()

    def wait_finished(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    # -- main flow -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._wait_for_volumes() and self._run_init_containers():
                with self._lock:
                    self.initialized = True
                self._touch()
                workers = [
                    threading.Thread(target=self._run_container, args=(r,), daemon=True)
                    for r in self.containers
                ]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
        except Exception:
            log.exception("pod %s/%s: node error", self.namespace, self.name)
            self.failure = ("NodeError", "the test node failed to run this pod (see test log)")
        finally:
            self._kill_all(0)
            self.finished.set()
            self._changed.set()
            self._status_thread.join(30)
            self.services.on_finished(self)

    def _wait_for_volumes(self) -> bool:
        while not self.stopping.is_set():
            try:
                self._volumes = prepare_volumes(
                    self.pod, self.directory, self.services.claims_root, self.services.api.get
                )
                return True
            except VolumeNotReady as exc:
                self._set_waiting_all("ContainerCreating", f"MountVolume.SetUp failed: {exc}")
            self.stopping.wait(RETRY_SECONDS)
        return False

    def _run_init_containers(self) -> bool:
        for record in self.init_containers:
            while True:
                result = self._run_once(record)
                if result is None:
                    return False
                if result["exitCode"] == 0:
                    break
                if self.restart_policy == "Never" or not self._back_off(record):
                    return False
        return True

    def _run_container(self, record: ContainerRecord) -> None:
        while True:
            result = self._run_once(record)
            if result is None or self.stopping.is_set():
                return
            policy = self.restart_policy
            if policy == "Never" or (policy == "OnFailure" and result["exitCode"] == 0):
                return
            if not self._back_off(record):
                return

    def _back_off(self, record: ContainerRecord) -> bool:
        """Wait the restart back-off as CrashLoopBackOff; False when the pod stops meanwhile."""
        first, cap = self.services.restart_backoff
        delay = min(cap, first * 2**record.restart_count)
        with self._lock:
            record.last_state, record.terminated = record.terminated, None
            record.running_since = None
            record.waiting = (
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={record.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            )
        self._touch()
        if self.stopping.wait(delay):
            return False
        with self._lock:
            record.restart_count += 1
        return True

    # -- one container run -----------------------------------------------------------

    def _run_once(self, record: ContainerRecord) -> dict | None:
        """Start the container and wait for it; its terminated state, or None if never run."""
        prepared = self._prepare(record)
        if prepared is None:
            return None
        if isinstance(prepared, dict):
            return self._finish(record, prepared)
        launch, env = prepared
        mounts = container_mounts(record.spec, self._volumes, env, record.termination_file())
        cwd = launch.cwd or record.spec.get("workingDir") or str(self.directory)
        targets = [(m.target, m.is_file) for m in mounts] + [(cwd, False)]
        try:
            held = self.services.mount_points.acquire(targets)
        except OSError as exc:
            return self._finish(record, self._start_error(f"creating mount points: {exc}"))
        try:
            return self._execute(record, launch, env, mounts, cwd)
        finally:
            self.services.mount_points.release(held)

    def _prepare(self, record: ContainerRecord) -> tuple[Launch, dict] | dict | None:
        """Resolve env and image; a Launch, a StartError state, or None if the pod stops."""
        while not self.stopping.is_set():
            try:
                env = container_env(self.pod, record.spec, self._base_env(), self.services.api.get)
                handler_ctx = ContainerContext(
                    pod=self.pod,
                    container=record.spec,
                    command=[expand(a, env) for a in record.spec.get("command") or []],
                    args=[expand(a, env) for a in record.spec.get("args") or []],
                    env=env,
                    ports=dict(self.ports),
                )
                self.services.images.resolve(record.spec["image"])
            except ContainerConfigError as exc:
                self._set_waiting(record, "CreateContainerConfigError", str(exc))
            except ImageNotFound as exc:
                self._set_waiting(record, "ErrImagePull", str(exc))
                if self.restart_policy != "Always":
                    # A kubelet would retry the pull forever; a run-to-completion pod fails
                    # at once here so a missing image-table entry shows instead of a hang.
                    self._fail_pod("ErrImagePull", str(exc))
                    return None
            else:
                try:
                    launch = self.services.images.launch(handler_ctx)
                except Exception as exc:  # the handler refused this container
                    return self._start_error(f"image handler: {exc}")
                return launch, {**env, **launch.env}
            self.stopping.wait(RETRY_SECONDS)
        return None

    def _base_env(self) -> dict[str, str]:
        return {**self.services.base_env, "HOSTNAME": self.name}

    def _execute(
        self, record: ContainerRecord, launch: Launch, env: dict, mounts: list, cwd: str
    ) -> dict | None:
        start_error = record.directory / f"{record.restart_count}.start-error"
        spec_file = record.directory / f"{record.restart_count}.spec.json"
        spec_file.write_text(
            json.dumps(
                {
                    "mounts": [m.__dict__ for m in mounts],
                    "cwd": cwd,
                    "argv": launch.argv,
                    "env": env,
                    "start_error_file": str(start_error),
                    "keep_visible": KEEP_VISIBLE,
                }
            )
        )
        spec_file.chmod(0o600)
        unshare = [UNSHARE, "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        argv = [*unshare, "--", sys.executable, "-I", str(MOUNTEXEC), str(spec_file)]
        with self._lock:
            if self.stopping.is_set():
                return None
            process = self.services.spawner.start(
                name=f"{self.namespace}/{self.name}/{record.name}",
                argv=argv,
                log=record.log_file(),
                env=env,
                cwd=str(self.directory),
            )
            record.process = process
            record.container_id = f"lorafuse://{uuid.uuid4().hex}"
            record.running_since = now_rfc3339()
            record.terminated = None
            record.started = not record.spec.get("startupProbe")
            record.ready = record.started and not record.spec.get("readinessProbe")
        self._touch()
        prober = self._prober(record, process, env) if not record.init else None
        if prober and prober.needed:
            prober.start()
        returncode = process.popen.wait()
        process.signal_group(signal.SIGKILL)  # leftovers of the container, as a cgroup kill
        if prober:
            prober.stop()
        if start_error.exists():
            return self._finish(record, self._start_error(start_error.read_text()))
        return self._finish(record, self._exit_state(record, returncode))

    def _prober(self, record: ContainerRecord, process: ManagedProcess, env: dict) -> Prober:
        def on_started() -> None:
            with self._lock:
                record.started = True
                record.ready = not record.spec.get("readinessProbe")
            self._touch()

        def on_ready(ready: bool) -> None:
            with self._lock:
                record.ready = ready
            self._touch()

        def on_unhealthy(message: str) -> None:
            log.info("pod %s/%s container %s: %s", self.namespace, self.name, record.name, message)
            grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
            process.stop(grace)

        target = ProbeTarget(pid=process.pid, env=env, port_of=self._port_of(record.spec))
        return Prober(record.spec, target, on_started, on_ready, on_unhealthy)

    def _exit_state(self, record: ContainerRecord, returncode: int) -> dict:
        exit_code = 128 - returncode if returncode < 0 else returncode
        state = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": record.running_since,
            "finishedAt": now_rfc3339(),
            "containerID": record.container_id,
        }
        if returncode < 0:
            state["signal"] = -returncode
        message = self._termination_message(record, exit_code)
        if message:
            state["message"] = message
        return state

    def _termination_message(self, record: ContainerRecord, exit_code: int) -> str:
        try:
            data = record.termination_file().read_bytes()[:MESSAGE_LIMIT]
        except OSError:
            data = b""
        policy = record.spec.get("terminationMessagePolicy", "File")
        if not data and exit_code != 0 and policy == "FallbackToLogsOnError":
            try:
                lines = record.log_file().read_bytes().splitlines(keepends=True)
            except OSError:
                lines = []
            data = b"".join(lines[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
        return data.decode(errors="replace")

    def _start_error(self, message: str) -> dict:
        now = now_rfc3339()
        return {
            "exitCode": 128,
            "reason": "StartError",
            "message": message.strip()[:MESSAGE_LIMIT],
            "startedAt": now,
            "finishedAt": now,
        }

    def _finish(self, record: ContainerRecord, state: dict) -> dict:
        with self._lock:
            record.terminated = state
            record.running_since = None
            record.process = None
            record.ready = False
            record.started = False
        self._touch()
        return state

    # -- stopping --------------------------------------------------------------------

    def _fail_pod(self, reason: str, message: str) -> None:
        with self._lock:
            self.failure = (reason, message)
            self.stopping.set()
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        threading.Thread(target=self._kill_all, args=(grace,), daemon=True).start()
        self._touch()

    def _kill_all(self, grace: float) -> None:
        processes = [r.process for r in self.init_containers + self.containers if r.process]
        threads = [threading.Thread(target=p.stop, args=(grace,), daemon=True) for p in processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- status ----------------------------------------------------------------------

    def _touch(self) -> None:
        self._changed.set()

    def _set_waiting(self, record: ContainerRecord, reason: str, message: str) -> None:
        with self._lock:
            record.waiting = (reason, message)
        self._touch()

    def _set_waiting_all(self, reason: str, message: str) -> None:
        with self._lock:
            for record in self.init_containers + self.containers:
                record.waiting = (reason, message)
        self._touch()

    def phase(self) -> str:
        with self._lock:
            return self._phase()

    def _phase(self) -> str:
        if self.failure:
            return "Failed"
        for record in self.init_containers:
            failed = record.terminated and record.terminated["exitCode"] != 0
            if failed and self.restart_policy == "Never":
                return "Failed"
        if not self.initialized:
            return "Pending"
        waiting = running = stopped = succeeded = 0
        for record in self.containers:
            if record.running_since is not None:
                running += 1
            elif record.terminated is not None:
                stopped += 1
                succeeded += record.terminated["exitCode"] == 0
            elif record.last_state is not None:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if self.restart_policy == "Always" and not self.finished.is_set():
            return "Running"
        if succeeded == stopped == len(self.containers):
            return "Succeeded"
        if self.restart_policy == "Never" or self.finished.is_set():
            return "Failed"
        return "Running"

    def _conditions(self, phase: str) -> list[dict]:
        done = phase in ("Succeeded", "Failed")
        unready = [r.name for r in self.containers if not r.ready]
        pending_init = [r.name for r in self.init_containers if not self.initialized]
        if done:
            initialized = _condition("Initialized", True, "PodCompleted")
            ready = _condition("ContainersReady", False, "PodCompleted")
        else:
            initialized = _condition(
                "Initialized",
                self.initialized,
                "" if self.initialized else "ContainersNotInitialized",
                "" if self.initialized else f"containers with incomplete status: {pending_init}",
            )
            ready = _condition(
                "ContainersReady",
                not unready,
                "ContainersNotReady" if unready else "",
                f"containers with unready status: {unready}" if unready else "",
            )
        pod_ready = {**ready, "type": "Ready"}
        conditions = [initialized, pod_ready, ready, _condition("PodScheduled", True)]
        for condition in conditions:
            key = (condition["status"], condition.get("reason", ""))
            previous = self._transitions.get(condition["type"])
            if previous is None or previous[0] != key:
                self._transitions[condition["type"]] = (key, now_rfc3339())
            condition["lastProbeTime"] = None
            condition["lastTransitionTime"] = self._transitions[condition["type"]][1]
        return conditions

    def status(self) -> dict:
        with self._lock:
            phase = self._phase()
            status = {
                "phase": phase,
                "conditions": self._conditions(phase),
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "containerStatuses": [r.status() for r in self.containers],
                "reason": self.failure[0] if self.failure else None,
                "message": self.failure[1] if self.failure else None,
            }
            if self.init_containers:
                status["initContainerStatuses"] = [r.status() for r in self.init_containers]
            return status

    def _status_loop(self) -> None:
        while True:
            self._changed.wait(1.0)
            self._changed.clear()
            last = self.finished.is_set()
            self._publish()
            if last:
                return

    def _publish(self) -> None:
        status = self.status()
        if status == self._last_status:
            return
        try:
            self.services.api.patch_pod_status(self.namespace, self.name, status)
            self._last_status = status
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile
                self._last_status = status
            else:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)
        except Exception as exc:  # the API server may be stopping
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)


@dataclass
class RunnerIndex:
    """Pod runners by uid, with lookups by name."""

    by_uid: dict[str, PodRunner] = field(default_factory=dict)

    def find(self, name: str, namespace: str | None = None) -> PodRunner:
        matches = [
            r
            for r in self.by_uid.values()
            if r.name == name and (namespace is None or r.namespace == namespace)
        ]
        if not matches:
            raise KeyError(f"no pod {name!r} ran on the test node")
        # The newest pod of that name wins (a recreated pod has a new uid).
        return max(matches, key=lambda r: r.created)
