"""Container probes (httpGet, tcpSocket, exec) and the loop that runs them like a kubelet."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

NSENTER = shutil.which("nsenter") or "nsenter"


@dataclass
class ProbeTarget:
    """Where probes of one running container go."""

    pid: int
    env: Mapping[str, str]
    port_of: Callable[[int | str], int]  # probe port (number or name) -> host port


def _http_get(action: dict, target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    port = target.port_of(action["port"])
    path = action.get("path") or "/"
    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"Get http://127.0.0.1:{port}{path}: {exc}"
    finally:
        conn.close()
    return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"


def _tcp_socket(action: dict, target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    port = target.port_of(action["port"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"dial tcp 127.0.0.1:{port}: {exc}"


def _exec(action: dict, target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    # Runs inside the container's mount namespace, with its environment and working dir.
    argv = [NSENTER, f"--target={target.pid}", "--mount", "--wd", "--", *action["command"]]
    try:
        proc = subprocess.run(
            argv, env=dict(target.env), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout}s"
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    return proc.returncode == 0, output


ACTIONS = {"httpGet": _http_get, "tcpSocket": _tcp_socket, "exec": _exec}


def run_probe(probe: dict, target: ProbeTarget) -> tuple[bool, str]:
    """One probe attempt: (success, message)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    for key, action in ACTIONS.items():
        if key in probe:
            try:
                return action(probe[key], target, timeout)
            except (KeyError, ValueError) as exc:
                return False, f"probe cannot run: {exc}"
    return False, f"unsupported probe handler {sorted(probe)}"


@dataclass
class ProbeState:
    """Schedule and consecutive results of one probe of one container run."""

    probe: dict
    next_at: float
    successes: int = 0
    failures: int = 0
    last_message: str = field(default="")

    @property
    def period(self) -> float:
        return float(self.probe.get("periodSeconds") or 10)

    def record(self, ok: bool, message: str) -> None:
        self.next_at = time.monotonic() + self.period
        self.last_message = message
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1

    @property
    def passed(self) -> bool:
        return self.successes >= int(self.probe.get("successThreshold") or 1)

    @property
    def failed(self) -> bool:
        return self.failures >= int(self.probe.get("failureThreshold") or 3)


class Prober:
    """Runs a container's startup, readiness and liveness probes until stopped.

    Callbacks: on_started() once the startup probe passes, on_ready(bool) when readiness
    changes, on_unhealthy(message) when the startup or liveness probe has failed
    failureThreshold times in a row (the container is then killed and maybe restarted).
    """

    def __init__(
        self,
        container: dict,
        target: ProbeTarget,
        on_started: Callable[[], None],
        on_ready: Callable[[bool], None],
        on_unhealthy: Callable[[str], None],
    ) -> None:
        started_at = time.monotonic()

        def state(kind: str) -> ProbeState | None:
            probe = container.get(kind)
            if not probe:
                return None
            return ProbeState(probe, started_at + float(probe.get("initialDelaySeconds") or 0))

        self.startup = state("startupProbe")
        self.readiness = state("readinessProbe")
        self.liveness = state("livenessProbe")
        self.target = target
        self.on_started, self.on_ready, self.on_unhealthy = on_started, on_ready, on_unhealthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)

    @property
    def needed(self) -> bool:
        return any((self.startup, self.readiness, self.liveness))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _loop(self) -> None:
        started = self.startup is None
        ready = False
        while not self._stop.is_set():
            now = time.monotonic()
            if not started:
                assert self.startup is not None
                if now >= self.startup.next_at:
                    self.startup.record(*run_probe(self.startup.probe, self.target))
                    if self.startup.passed:
                        started = True
                        self.on_started()
                    elif self.startup.failed:
                        self.on_unhealthy(f"Startup probe failed: {self.startup.last_message}")
                        return
            else:
                if self.readiness and now >= self.readiness.next_at:
                    self.readiness.record(*run_probe(self.readiness.probe, self.target))
                    if not ready and self.readiness.passed:
                        ready = True
                        self.on_ready(True)
                    elif ready and self.readiness.failed:
                        ready = False
                        self.on_ready(False)
                if self.liveness and now >= self.liveness.next_at:
                    self.liveness.record(*run_probe(self.liveness.probe, self.target))
                    if self.liveness.failed:
                        self.on_unhealthy(f"Liveness probe failed: {self.liveness.last_message}")
                        return
            self._stop.wait(self._sleep_time(started))

    def _sleep_time(self, started: bool) -> float:
        due = [self.startup] if not started else [self.readiness, self.liveness]
        times = [s.next_at for s in due if s is not None]
        if not times:
            return 1.0
        return min(1.0, max(0.05, min(times) - time.monotonic()))
