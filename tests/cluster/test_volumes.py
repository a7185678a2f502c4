"""Volumes of pods on the stand-in node: ConfigMap files, PVC folders, read-only mounts."""

from pathlib import Path

import kubernetes
import pytest

from .workloads import python_pod, termination_message, wait_for_phase

pytestmark = pytest.mark.cluster


@pytest.fixture
def core(control_plane):
    return kubernetes.client.CoreV1Api(control_plane.client)


def test_configmap_volume_file_is_readable_in_the_pod(core, namespace, node):
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"app.conf": "threads=4\n"}}
    )
    script = "open('/dev/termination-log', 'w').write(open('/etc/harness-test/app.conf').read())"
    manifest = python_pod(
        "reader",
        script,
        volumes=[{"name": "settings", "configMap": {"name": "settings"}}],
        container={"volumeMounts": [{"name": "settings", "mountPath": "/etc/harness-test"}]},
    )
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "reader", "Succeeded", "Failed")
    assert termination_message(pod) == "threads=4\n"
    assert not Path("/etc/harness-test").exists()  # the mount point was removed from the host


def test_read_only_pvc_mount_cannot_be_written(core, namespace, node):
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "models"},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
    )
    claim = node.claim_dir(namespace, "models")
    (claim / "weights.bin").write_text("w")
    script = (
        "import os\n"
        "seen = open('/models/weights.bin').read()\n"
        "try:\n"
        "    open('/models/new.bin', 'w').write('x')\n"
        "    result = 'written'\n"
        "except OSError as exc:\n"
        "    result = os.strerror(exc.errno)\n"
        "open('/dev/termination-log', 'w').write(seen + ' ' + result)\n"
    )
    manifest = python_pod(
        "writer",
        script,
        volumes=[{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        container={"volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]},
    )
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "writer", "Succeeded", "Failed")
    assert termination_message(pod) == "w Read-only file system"
    assert not (claim / "new.bin").exists()


def test_pod_waits_for_its_missing_claim(core, namespace, node):
    manifest = python_pod(
        "patient",
        "pass",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "later"}}],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    )
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_for_phase(core, namespace, "patient", "Pending")

    def waiting_reason():
        pod = core.read_namespaced_pod("patient", namespace)
        statuses = pod.status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.message

    from .controlplane import wait_until

    message = wait_until(waiting_reason, timeout=30, what="pod patient to report its volume")
    assert 'persistentvolumeclaim "later" not found' in message
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "later"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
    )
    pod = wait_for_phase(core, namespace, "patient", "Succeeded", "Failed")
    assert pod.status.phase == "Succeeded"


def test_a_volume_over_the_checkouts_parent_keeps_the_code_visible(core, namespace, node):
    checkout = Path(__file__).resolve().parents[2]
    marker = checkout.parent / f"written-in-{namespace}"
    script = (
        "import lorafuse\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        "open('/dev/termination-log', 'w').write(lorafuse.__name__)\n"
    )
    manifest = python_pod(
        "shadowed",
        script,
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": str(checkout.parent)}]},
    )
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "shadowed", "Succeeded", "Failed")
    assert termination_message(pod) == "lorafuse"
    assert not marker.exists()  # the write went to the emptyDir, not to the host folder
