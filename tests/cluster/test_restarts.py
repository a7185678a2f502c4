"""Restart policy, liveness probes and termination messages of failed containers."""

import kubernetes
import pytest

from .controlplane import wait_until
from .workloads import python_pod, termination_message, wait_for_phase

pytestmark = pytest.mark.cluster

STATE = {"volumeMounts": [{"name": "state", "mountPath": "/state"}]}
STATE_VOLUME = [{"name": "state", "emptyDir": {}}]


@pytest.fixture
def core(control_plane):
    return kubernetes.client.CoreV1Api(control_plane.client)


def test_on_failure_restarts_the_failed_container_until_it_succeeds(core, namespace, node):
    # Fails on the first run only: the emptyDir outlives container restarts.
    script = (
        "import os, sys\n"
        "if not os.path.exists('/state/ran'):\n"
        "    open('/state/ran', 'w').close(); sys.exit(7)\n"
    )
    manifest = python_pod(
        "flaky", script, restartPolicy="OnFailure", volumes=STATE_VOLUME, container=STATE
    )
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "flaky", "Succeeded", "Failed")
    status = pod.status.container_statuses[0]
    assert (pod.status.phase, status.restart_count) == ("Succeeded", 1)
    assert status.last_state.terminated.exit_code == 7


def test_failing_liveness_probe_restarts_the_container(core, namespace, node):
    # The first run never becomes live; the second marks itself live at once.
    script = (
        "import os, time\n"
        "if os.path.exists('/state/first'):\n"
        "    open('/state/alive', 'w').close()\n"
        "open('/state/first', 'w').close()\n"
        "time.sleep(600)\n"
    )
    liveness = {
        "exec": {"command": ["test", "-e", "/state/alive"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    manifest = python_pod(
        "sleepy",
        script,
        restartPolicy="Always",
        terminationGracePeriodSeconds=2,
        volumes=STATE_VOLUME,
        container={**STATE, "livenessProbe": liveness},
    )
    core.create_namespaced_pod(namespace, manifest)

    def restarted_and_running():
        pod = core.read_namespaced_pod("sleepy", namespace)
        statuses = pod.status.container_statuses or []
        return statuses and statuses[0].restart_count == 1 and statuses[0].state.running

    wait_until(restarted_and_running, timeout=30, what="pod sleepy to be restarted once")
    status = core.read_namespaced_pod("sleepy", namespace).status.container_statuses[0]
    assert status.last_state.terminated.exit_code == 143  # SIGTERM


def test_fallback_to_logs_on_error_uses_the_log_tail_as_message(core, namespace, node):
    script = "import sys; print('loading', flush=True); sys.exit('boom: no weights')"
    container = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    core.create_namespaced_pod(namespace, python_pod("crash", script, container=container))

    pod = wait_for_phase(core, namespace, "crash", "Failed", "Succeeded")
    assert termination_message(pod) == "loading\nboom: no weights\n"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1
