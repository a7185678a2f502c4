"""Child processes of the harness: own process group, log file, stopped with TERM then KILL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the test session is killed outright, its children must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ManagedProcess:
    """A started child and where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> int:
        """TERM the whole process group, KILL it after `grace` seconds; return the exit code."""
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        # The group may hold children that ignored TERM even when the leader is gone.
        self.signal_group(signal.SIGKILL)
        return self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stderr_log: Path | None = None,
    die_with_parent: bool = True,
) -> ManagedProcess:
    """Start `argv` in its own session with stdout (and stderr unless split) to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        err = open(stderr_log, "ab") if stderr_log else None  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err if err else subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        finally:
            if err:
                err.close()
    return ManagedProcess(name=name, popen=popen, log=log)


class Spawner:
    """Starts processes from one long-lived thread.

    The kernel's parent-death signal follows the *thread* that forked, so children
    started from short-lived worker threads would be killed when those threads end.
    Routing every start through this thread ties the children to the spawner's life.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            kwargs, done = item
            try:
                done.set_result(start_process(**kwargs))
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)

    def start(self, **kwargs) -> ManagedProcess:
        """Like start_process(**kwargs), run on the spawner thread."""
        done: Future = Future()
        self._requests.put((kwargs, done))
        return done.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(5)
