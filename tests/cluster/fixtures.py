"""Pytest plugin: a real control plane (session), a fresh namespace per test, the stand-in node.

Registered for the whole suite from tests/conftest.py (`pytest_plugins`). Tests that use
these fixtures get the `cluster` marker automatically, so `pytest -m "not cluster"` skips them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from .controlplane import ControlPlane, ControlPlaneError, find_binaries
from .kubelet import Node

CLUSTER_FIXTURES = frozenset({"control_plane", "namespace", "node", "cluster_node"})
LOG_LOCATIONS = pytest.StashKey[list[str]]()
# Two GPUs, so a GPU Deployment can surge one new pod next to the old one.
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "2"}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LOG_LOCATIONS] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    uses_cluster = CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ()))
    locations = item.config.stash.get(LOG_LOCATIONS, [])
    if report.failed and uses_cluster and locations:
        report.sections.append(("kubernetes test cluster", "\n".join(locations)))
    return report


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager on loopback, for the whole session."""
    try:
        bin_dir = find_binaries()
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("control-plane"))
    pytestconfig.stash[LOG_LOCATIONS].append(f"component logs: {plane.log_dir}")
    try:
        plane.start()
        yield plane
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        plane.stop()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:48].rstrip("-")
    return f"{slug or 'test'}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (its default service account ready), deleted after the test."""
    core = kubernetes.client.CoreV1Api(control_plane.client)
    name = _namespace_name(request.node.name)
    core.create_namespace({"metadata": {"name": name, "labels": {"lorafuse.dev/test": "true"}}})
    control_plane.wait_for_service_account(name)
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def cluster_node(
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[Node]:
    """The stand-in node for the session; tests use `node`, which serves their namespace."""
    node = Node(
        control_plane.api_client(),
        tmp_path_factory.mktemp("node"),
        control_plane.apiserver_port,
        capacity=NODE_CAPACITY,
        # Shorter than a kubelet's 10 s / 5 min so restart tests stay quick.
        restart_backoff=(1.0, 10.0),
    )
    pytestconfig.stash[LOG_LOCATIONS].append(f"pod logs: {node.workdir / 'pods'}")
    try:
        node.start()
        yield node
    finally:
        node.stop()
        node.api.client.close()


@pytest.fixture
def node(cluster_node: Node, namespace: str) -> Iterator[Node]:
    """The stand-in node serving this test's namespace.

    Image-table entries and capacity changes made by the test are undone afterwards, and
    the namespace's pods are deleted gracefully (the node stops their processes).
    """
    images = cluster_node.images.snapshot()
    capacity = dict(cluster_node.capacity)
    cluster_node.serve(namespace)
    yield cluster_node
    cluster_node.drain(namespace)
    cluster_node.images.restore(images)
    if cluster_node.capacity != capacity:
        cluster_node.replace_capacity(capacity)
