"""Jobs run by the real Job controller on the stand-in node."""

import json

import kubernetes
import pytest

from .controlplane import wait_until

pytestmark = pytest.mark.cluster


def job(name: str, script: str, backoff_limit: int = 0, **container) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11-slim",
                            "command": ["python", "-c", script],
                            **container,
                        }
                    ],
                }
            },
        },
    }


def test_job_completes_and_pod_status_carries_termination_message(control_plane, namespace, node):
    batch = kubernetes.client.BatchV1Api(control_plane.client)
    core = kubernetes.client.CoreV1Api(control_plane.client)
    script = (
        "import json, os\n"
        "with open('/dev/termination-log', 'w') as f:\n"
        "    json.dump({'pod': os.environ['POD_NAME'], 'ns': os.environ['POD_NAMESPACE']}, f)\n"
    )
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    batch.create_namespaced_job(namespace, job("hello", script, env=env))

    wait_until(
        lambda: batch.read_namespaced_job("hello", namespace).status.succeeded == 1,
        timeout=60,
        what="job hello to succeed",
    )
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded"
    assert terminated.reason == "Completed"
    assert json.loads(terminated.message) == {"pod": pod.metadata.name, "ns": namespace}


def test_failing_job_retries_up_to_backoff_limit_then_fails(control_plane, namespace, node):
    batch = kubernetes.client.BatchV1Api(control_plane.client)
    core = kubernetes.client.CoreV1Api(control_plane.client)
    batch.create_namespaced_job(
        namespace, job("broken", "import sys; sys.exit(3)", backoff_limit=1)
    )

    def failed_condition():
        conditions = batch.read_namespaced_job("broken", namespace).status.conditions or []
        return next((c for c in conditions if c.type == "Failed" and c.status == "True"), None)

    condition = wait_until(failed_condition, timeout=90, what="job broken to fail")
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=broken").items
    assert condition.reason == "BackoffLimitExceeded"
    assert len(pods) == 2
    for pod in pods:
        terminated = pod.status.container_statuses[0].state.terminated
        assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
