"""Kubelet rules the node follows, checked without a cluster: $(VAR), requests, mount points."""

from decimal import Decimal

import pytest

from .podspec import expand, pod_requests
from .volumes import MountPoints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--port=$(PORT)", "--port=8000"),
        ("$(PORT)$(HOST)", "8000localhost"),
        ("$$(PORT)", "$(PORT)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(PORT", "$(PORT"),
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
    ],
)
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"PORT": "8000", "HOST": "localhost"}) == expected


def test_pod_requests_take_the_larger_of_containers_sum_and_init_container():
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "500m"}, "limits": {"nvidia.com/gpu": "1"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
        }
    }
    assert pod_requests(pod) == {
        "cpu": Decimal(2),
        "memory": Decimal(2**30),
        "nvidia.com/gpu": Decimal(1),
    }


def test_mount_points_are_removed_when_the_last_user_releases_them(tmp_path):
    points = MountPoints()
    target = tmp_path / "a" / "b"
    first = points.acquire([(str(target), False)])
    second = points.acquire([(str(target), False)])
    points.release(first)
    assert target.is_dir()
    points.release(second)
    assert not (tmp_path / "a").exists()


def test_mount_points_leave_existing_paths_alone(tmp_path):
    existing = tmp_path / "etc"
    existing.mkdir()
    points = MountPoints()
    points.release(points.acquire([(str(existing / "termination-log"), True)]))
    assert existing.is_dir() and not (existing / "termination-log").exists()
