"""vLLM on this machine: find it, start it (args: serving/vllm_args.py), ask it once, stop it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["VllmServer", "complete", "find_vllm_python", "free_port", "start_vllm", "stop",
           "wait_ready"]

VLLM_PYTHON_ENV = "LORAFUSE_VLLM_PYTHON"
DEFAULT_VENV = Path.home() / ".cache" / "lorafuse" / "vllm-venv"  # scripts/vllm-venv.sh


def find_vllm_python() -> Path | None:
    """The vLLM venv's python: $LORAFUSE_VLLM_PYTHON, else scripts/vllm-venv.sh's default."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    candidate = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    return candidate if candidate.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VllmServer:
    process: subprocess.Popen
    endpoint: str  # http://127.0.0.1:PORT/v1
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_vllm(python: Path, args: list[str], log_path: Path, env: Mapping[str, str]) -> VllmServer:
    """Start vLLM's OpenAI server in its own process group, logging to `log_path`."""
    port = args[args.index("--port") + 1]
    environment = {**os.environ, **env}
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is larger
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as handle:
        process = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", *args],
            # A neutral directory: a source tree's `operator/` would shadow the stdlib module.
            cwd=tempfile.gettempdir(),
            env=environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return VllmServer(process, f"http://127.0.0.1:{port}/v1", log_path)


def wait_ready(server: VllmServer, timeout: float) -> None:
    """Poll /health until vLLM answers; raise RuntimeError if it exits or takes too long."""
    health = server.endpoint.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {server.process.returncode}:\n"
                               f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM did not become ready in {timeout:.0f} s:\n{server.log_tail()}")


def complete(server: VllmServer, model: str, prompt: str, max_tokens: int = 16) -> str:
    """One greedy completion from the OpenAI-compatible endpoint."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    request = urllib.request.Request(f"{server.endpoint}/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["text"]


def stop(server: VllmServer, grace: float = 30) -> None:
    """SIGTERM vLLM's process group (its engine runs in child processes), then SIGKILL."""
    if server.process.poll() is None:
        _signal_group(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(server.process.pid, signal.SIGKILL)
            server.process.wait()
    # Workers left behind after the leader exited still belong to its group.
    _signal_group(server.process.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)
