"""Pods on the stand-in node: environment, init containers, probes, deletion, placement."""

import signal
import time

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from .controlplane import wait_until
from .workloads import python_pod, termination_message, wait_for_phase

pytestmark = pytest.mark.cluster

WRITE_ARGV = "import sys; open('/dev/termination-log', 'w').write(' '.join(sys.argv[1:]))"


@pytest.fixture
def core(control_plane):
    return kubernetes.client.CoreV1Api(control_plane.client)


def test_env_from_secret_and_configmap_expands_in_args(core, namespace, node):
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "GREETING", "value": "mode=$(MODE)"},
    ]
    container = {"env": env, "args": ["$(GREETING)", "$(TOKEN)", "$$(MODE)", "$(UNSET)"]}
    core.create_namespaced_pod(namespace, python_pod("env", WRITE_ARGV, container=container))

    pod = wait_for_phase(core, namespace, "env", "Succeeded", "Failed")
    assert termination_message(pod) == "mode=fast s3cret $(MODE) $(UNSET)"


def test_init_containers_run_in_order_before_the_container(core, namespace, node):
    def step(name: str) -> dict:
        script = f"open('/work/steps', 'a').write('{name} ')"
        return {
            "name": name,
            "image": "python:3.11-slim",
            "command": ["python", "-c", script],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }

    main = "open('/dev/termination-log', 'w').write(open('/work/steps').read())"
    manifest = python_pod(
        "init",
        main,
        initContainers=[step("first"), step("second")],
        volumes=[{"name": "work", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
    )
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "init", "Succeeded", "Failed")
    assert termination_message(pod) == "first second "
    assert [s.state.terminated.reason for s in pod.status.init_container_statuses] == [
        "Completed",
        "Completed",
    ]


def test_pod_is_ready_only_once_its_readiness_probe_passes(core, namespace, node):
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "site"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
    )
    node.images.register(
        "harness/static:*",
        lambda ctx: [
            "python",
            "-m",
            "http.server",
            str(ctx.port(80)),
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv",
        ],
    )
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "static"},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "harness/static:1",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthy", "port": 80},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                    "volumeMounts": [{"name": "site", "mountPath": "/srv"}],
                }
            ],
            "volumes": [{"name": "site", "persistentVolumeClaim": {"claimName": "site"}}],
        },
    }
    core.create_namespaced_pod(namespace, manifest)

    def ready_condition():
        pod = core.read_namespaced_pod("static", namespace)
        return {c.type: c.status for c in pod.status.conditions or []}.get("Ready")

    wait_for_phase(core, namespace, "static", "Running")
    time.sleep(2.5)  # a few failing probe periods
    assert ready_condition() == "False"
    (node.claim_dir(namespace, "site") / "healthy").write_text("ok")
    wait_until(lambda: ready_condition() == "True", timeout=30, what="pod static to become Ready")


def test_deleting_a_pod_sends_sigterm_then_removes_it(core, namespace, node):
    script = (
        "import signal, sys, time\n"
        "def bye(signum, frame):\n"
        "    print('got', signum, flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    core.create_namespaced_pod(
        namespace, python_pod("sleeper", script, terminationGracePeriodSeconds=20)
    )
    wait_until(
        lambda: "up" in node.logs("sleeper", namespace=namespace), timeout=30, what="sleeper up"
    )
    runner = node.runner("sleeper", namespace)

    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)

    def gone():
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, timeout=30, what="pod sleeper to be deleted")
    assert time.monotonic() - started < 15  # it left at SIGTERM, not at the grace period's end
    assert f"got {signal.SIGTERM.value}" in node.logs("sleeper", namespace=namespace)
    assert not runner.containers[0].process


def test_unmapped_image_fails_pod_with_err_image_pull(core, namespace, node):
    manifest = python_pod("ghost", "pass", container={"image": "example.com/not-registered:1"})
    core.create_namespaced_pod(namespace, manifest)

    pod = wait_for_phase(core, namespace, "ghost", "Failed")
    assert pod.status.reason == "ErrImagePull"
    assert pod.status.container_statuses[0].state.waiting.reason == "ErrImagePull"


def test_pod_requesting_more_gpus_than_the_node_has_stays_pending(core, namespace, node):
    node.set_capacity(**{"nvidia.com/gpu": "1"})
    limits = {"resources": {"limits": {"nvidia.com/gpu": "2"}}}
    core.create_namespaced_pod(namespace, python_pod("greedy", "pass", container=limits))

    def unschedulable():
        pod = core.read_namespaced_pod("greedy", namespace)
        scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        return scheduled and scheduled[0].reason == "Unschedulable" and scheduled[0]

    condition = wait_until(
        unschedulable, timeout=30, what="pod greedy to be reported unschedulable"
    )
    assert "Insufficient nvidia.com/gpu" in condition.message
    assert core.read_namespaced_pod("greedy", namespace).spec.node_name is None


def test_pod_requesting_a_gpu_runs(core, namespace, node):
    limits = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    core.create_namespaced_pod(namespace, python_pod("gpu", "pass", container=limits))

    pod = wait_for_phase(core, namespace, "gpu", "Succeeded", "Failed")
    assert (pod.status.phase, pod.spec.node_name) == ("Succeeded", node.name)


def test_pod_reaches_the_api_server_with_its_service_account(core, namespace, node):
    script = (
        "import kubernetes\n"
        "kubernetes.config.load_incluster_config()\n"
        "version = kubernetes.client.VersionApi().get_code().git_version\n"
        "open('/dev/termination-log', 'w').write(version)\n"
    )
    core.create_namespaced_pod(namespace, python_pod("incluster", script))

    pod = wait_for_phase(core, namespace, "incluster", "Succeeded", "Failed")
    assert termination_message(pod) == "v1.20.2"
