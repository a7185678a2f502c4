"""Fixtures of the end-to-end tests: a real node (session) and root-owned local volumes."""

from __future__ import annotations

import fcntl
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlaneError, find_binaries, wait_until

from .host import failed_check
from .nodeplane import NodeControlPlane
from .realnode import RealNode
from .volumes import Volumes

REPO = Path(__file__).resolve().parents[2]
LOCK = Path("/tmp/lorafuse-realnode.lock")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            # The first test also pays for image builds, node start, merge and vLLM start.
            item.add_marker(pytest.mark.timeout(3600))


@dataclass
class Cluster:
    """The control plane, the node and the images built by scripts/images.sh."""

    plane: NodeControlPlane
    node: RealNode
    images: dict[str, str]
    workdir: Path
    volumes: Volumes


def build_images() -> dict[str, str]:
    """Run scripts/images.sh --tests (cached by content hash); NAME -> image reference."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "images.sh"), "--tests"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/images.sh --tests failed:\n{proc.stderr[-4000:]}", pytrace=False)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Control plane + a real node; skipped, naming the failed check, where it cannot run."""
    started = time.monotonic()
    problem = failed_check(None)
    if problem:
        pytest.skip(f"no real node on this machine: {problem}")
    try:
        bin_dir = find_binaries()
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    problem = failed_check(bin_dir)
    if problem:
        pytest.skip(f"no real node on this machine: {problem}")
    lock = open(LOCK, "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.skip(f"no real node on this machine: fcntl.flock({LOCK}) failed (another node runs)")
    images = build_images()
    print(f"\nimages (scripts/images.sh --tests): {time.monotonic() - started:.1f} s")
    workdir = tmp_path_factory.mktemp("realnode")
    plane = NodeControlPlane(bin_dir, workdir / "plane")
    node = RealNode(plane, bin_dir, workdir / "node")
    try:
        node.prepare_host()
        plane.start()
        node.start([images[name] for name in ("base", "operator", "merger", "vllm")])
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in node.timings.items())
        print(f"\nreal node: control plane + {timings}")
        volumes = Volumes(plane.client, workdir / "volumes")
        yield Cluster(plane, node, images, workdir, volumes)
    finally:
        problems = node.stop()
        lock.close()
        assert not problems, "real node clean-up left: " + "; ".join(problems)


@pytest.fixture
def node_namespace(real_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real cluster, deleted (and its pods gone) after the test."""
    core = kubernetes.client.CoreV1Api(real_cluster.plane.client)
    name = f"e2e-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    real_cluster.plane.wait_for_service_account(name)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    wait_until(
        lambda: not core.list_namespaced_pod(name).items,
        timeout=120,
        what=f"pods of namespace {name} gone",
        interval=1,
    )


@pytest.fixture
def local_volume(real_cluster: Cluster, node_namespace: str) -> Callable[..., Path]:
    """make(claim, fill=None): a bound `local` PV claim in the test's namespace, root-owned."""

    def make(claim: str, fill: Callable[[Path], None] | None = None) -> Path:
        return real_cluster.volumes.make(node_namespace, claim, fill)

    return make
