"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import kubernetes
import yaml

from .pki import Pki, create_pki
from .processes import ManagedProcess, free_port, start_process

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARIES_SCRIPT = REPO_ROOT / "scripts" / "kube-binaries.sh"

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "lorafuse-admin"
ETCD_DIR_PREFIX = "lorafuse-etcd-"

# The controllers a kubelet-less test cluster needs; nodelifecycle is left out on
# purpose (it would taint and evict pods of a node that sends no heartbeats).
CONTROLLERS = (
    "job",
    "cronjob",
    "deployment",
    "replicaset",
    "statefulset",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "clusterrole-aggregation",
    "endpoint",
    "endpointslice",
    "disruption",
    "resourcequota",
    "pvc-protection",
    "podgc",
)

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be provided or started."""


def find_binaries() -> Path:
    """Run scripts/kube-binaries.sh (fast when cached) and return the folder it prints."""
    proc = subprocess.run(
        ["bash", str(BINARIES_SCRIPT)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"{BINARIES_SCRIPT} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ControlPlaneError(f"{BINARIES_SCRIPT} printed no folder")
    return Path(lines[-1])


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # remembered for the timeout message
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, started and stopped as one."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.token = secrets.token_hex(24)
        self.kubeconfig = workdir / "kubeconfig"
        self.processes: list[ManagedProcess] = []
        self.pki: Pki | None = None
        self.apiserver_port = 0
        self._etcd_data: Path | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None
        return self.pki.ca_cert

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = create_pki(self.workdir / "pki")
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig()
        self._start_controller_manager()

    def stop(self) -> None:
        """Stop every component (newest first) and drop etcd's data."""
        if "client" in self.__dict__:
            self.client.close()
        for proc in reversed(self.processes):
            proc.stop(grace=10)
        self.processes.clear()
        if self._etcd_data:
            shutil.rmtree(self._etcd_data, ignore_errors=True)

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"{path}: not an executable")
        return str(path)

    def _launch(self, name: str, argv: list[str], ready: Callable[[], bool]) -> ManagedProcess:
        proc = start_process(name, argv, self.log_dir / f"{name}.log")
        self.processes.append(proc)

        def check() -> bool:
            if not proc.alive():
                raise ControlPlaneError(
                    f"{name} exited with {proc.popen.returncode}; log {proc.log}:\n"
                    f"{proc.log_tail()}"
                )
            return ready()

        try:
            wait_until(check, timeout=90, what=f"{name} to become ready", interval=0.25)
        except TimeoutError as exc:
            raise ControlPlaneError(f"{exc}; log {proc.log}:\n{proc.log_tail()}") from exc
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self._etcd_data = _etcd_data_dir(self.workdir)
        url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.etcd_url = url
        argv = [
            self._binary("etcd"),
            "--name=test",
            f"--data-dir={self._etcd_data}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        self._launch("etcd", argv, lambda: _http_ok(f"{url}/health"))

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        self.apiserver_port = free_port()
        token_file = self.workdir / "tokens.csv"
        token_file.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        token_file.chmod(0o600)
        argv = [
            self._binary("kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            "--insecure-port=0",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={self.pki.service_account_key}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # The `kubernetes` Service's endpoints may not be a loopback address.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]
        self._launch("kube-apiserver", argv, self._apiserver_ready)

    def _apiserver_ready(self) -> bool:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        return _http_ok(f"{self.server}/readyz", context=ctx, token=self.token)

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, ADMIN_USER, self.token)

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """A kubeconfig for this server that authenticates as `user` with a bearer token."""
        assert self.pki is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _controller_manager_flags(self) -> list[str]:
        """The controllers to run and how they authenticate (a node adds its networks)."""
        return [f"--controllers={','.join(CONTROLLERS)}", "--use-service-account-credentials=false"]

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        port = free_port()
        argv = [
            self._binary("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--port=0",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
            *self._controller_manager_flags(),
        ]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._launch(
            "kube-controller-manager",
            argv,
            lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure),
        )
        # Pods can only be created once their namespace's service account has a token.
        self.wait_for_service_account("default")

    # -- clients ---------------------------------------------------------------------

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client of the official `kubernetes` package, as the admin user (close it)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    @functools.cached_property
    def client(self) -> kubernetes.client.ApiClient:
        """A shared admin client for the session, closed when the control plane stops."""
        return self.api_client()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; raise with its stderr when `check` and it fails."""
        argv = [self._binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def wait_for_service_account(self, namespace: str, name: str = "default") -> None:
        """Wait until the service account exists and has its token secret."""
        core = kubernetes.client.CoreV1Api(self.client)

        def has_token() -> bool:
            account = core.read_namespaced_service_account(name, namespace)
            return bool(account.secrets)

        wait_until(has_token, timeout=60, what=f"service account {namespace}/{name}")

    def log_files(self) -> list[Path]:
        return [proc.log for proc in self.processes]


def _etcd_data_dir(fallback: Path) -> Path:
    """A fresh etcd data dir in memory (etcd fsyncs every write; the data is thrown away).

    Named after this process, so dirs left by a killed session can be recognised and removed.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return Path(tempfile.mkdtemp(prefix="etcd-", dir=fallback))
    for stale in shm.glob(f"{ETCD_DIR_PREFIX}*"):
        pid = stale.name[len(ETCD_DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{ETCD_DIR_PREFIX}{os.getpid()}-", dir=shm))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _http_ok(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
