"""The demo ModelDeployment on a real node: helm-installed operator, merge Job, vLLM, rollback.

Tests run in file order on one ModelDeployment: merged serving first, then adapter serving,
then a spec whose validation fails (back to the first artifact), then deletion.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.cluster.controlplane import wait_until
from tests.operator.cluster import ModelDeployments, condition

from .conftest import REPO, Cluster
from .operator_release import completion, eval_prompts, helm_install, helm_uninstall
from .pods import UID

NAME = "demo"
EXAMPLE = REPO / "examples" / "demo-modeldeployment.yaml"
SERVE_TIMEOUT = 900  # merge + vLLM start on 2 shared CPU cores


def fill_models(folder: Path) -> None:
    """The model volume as the example expects it: demo/{base,adapter} and examples/."""
    subprocess.run(
        ["lorafuse", "demo", "--dir", str(folder / "demo")],
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.copytree(REPO / "examples", folder / "examples")


def demo_manifest(cluster: Cluster) -> dict[str, Any]:
    """examples/demo-modeldeployment.yaml, on the test's volume and the vLLM CPU image."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["storage"] = {"existingClaim": "models"}
    serving = manifest["spec"]["serving"]
    serving["image"] = cluster.images["vllm"]
    # float32: in bfloat16 the tiny random model's near-flat logits let the merged weights
    # and the runtime LoRA path pick different greedy tokens after a few steps.
    serving["extraArgs"] = [*serving.get("extraArgs", []), "--dtype", "float32"]
    return manifest


class Demo:
    """The served demo: its namespace, the model folder and how long serving took."""

    def __init__(self, cluster: Cluster, namespace: str, folder: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.folder = folder
        self.mdeps = ModelDeployments(cluster.plane, namespace)
        self.core = kubernetes.client.CoreV1Api(cluster.plane.client)
        self.seconds_to_first_completion = 0.0
        self.first_digest = ""

    @property
    def url(self) -> str:
        service = self.core.read_namespaced_service(NAME, self.namespace)
        return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"

    def first_completion(self, prompt: str) -> str:
        """Bounded retries: the Service answers once kube-proxy has the ready endpoint."""
        return wait_until(lambda: completion(self.url, NAME, prompt), 60, "a completion", 2)

    def pods(self, component: str) -> list[Any]:
        selector = f"lorafuse.dev/deployment={NAME},lorafuse.dev/component={component}"
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items


@pytest.fixture(scope="module")
def demo(real_cluster: Cluster) -> Iterator[Demo]:
    """Operator installed by helm; the demo applied with kubectl and served merged."""
    core = kubernetes.client.CoreV1Api(real_cluster.plane.client)
    namespace = "demo-e2e"
    core.create_namespace({"metadata": {"name": namespace}})
    real_cluster.plane.wait_for_service_account(namespace)
    folder = real_cluster.volumes.make(namespace, "models", fill_models)
    helm_install(real_cluster)
    demo = Demo(real_cluster, namespace, folder)
    started = time.monotonic()
    real_cluster.plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(demo_manifest(real_cluster))
    )
    demo.mdeps.wait_status(
        NAME,
        lambda s: s.get("phase") in ("Serving", "Failed", "RolledBack"),
        SERVE_TIMEOUT,
        "Serving",
    )
    demo.first_digest = demo.mdeps.status(NAME).get("artifact", {}).get("digest", "")
    first = eval_prompts(REPO / "examples" / "demo-eval.jsonl")[0]["prompt"]
    demo.first_completion(first)
    demo.seconds_to_first_completion = time.monotonic() - started
    print(f"kubectl apply -> first completion: {demo.seconds_to_first_completion:.0f} s")
    yield demo
    helm_uninstall(real_cluster)
    core.delete_namespace(namespace)


def test_the_demo_is_served_merged(demo: Demo):
    status = demo.mdeps.status(NAME)
    assert (status["phase"], status["servingMode"]) == ("Serving", "merged"), status


def test_the_merge_job_ran_in_the_merger_image_as_its_uid_on_the_root_owned_volume(demo: Demo):
    (job_pod,) = demo.pods("merge")
    assert job_pod.status.phase == "Succeeded"
    images = {c.image for c in job_pod.spec.containers + job_pod.spec.init_containers}
    assert images == {demo.cluster.images["merger"]}
    assert job_pod.spec.security_context.run_as_user == UID
    volume = demo.folder.stat()
    assert volume.st_uid == 0  # root-owned like a fresh volume; fsGroup made it writable
    (artifact,) = (demo.folder / "artifacts").iterdir()
    assert artifact.stat().st_uid == UID


def test_the_serving_pod_verified_the_digest_before_vllm_started(demo: Demo):
    status = demo.mdeps.status(NAME)
    (pod,) = [p for p in demo.pods("serving") if p.status.phase == "Running"]
    (verify,) = pod.status.init_container_statuses
    assert verify.state.terminated.exit_code == 0
    assert status["artifact"]["digest"] in (verify.state.terminated.message or "")


def test_every_pod_ran_restricted_as_non_root(demo: Demo):
    for pod in demo.pods("merge") + demo.pods("serving"):
        context = pod.spec.security_context
        assert context.run_as_non_root and context.run_as_user == UID and context.fs_group == UID
        assert context.seccomp_profile.type == "RuntimeDefault"
        for container in pod.spec.containers + (pod.spec.init_containers or []):
            assert container.security_context.allow_privilege_escalation is False
            assert container.security_context.capabilities.drop == ["ALL"]


def test_the_merged_completion_through_the_service_equals_adapter_serving(demo: Demo):
    prompts = [p["prompt"] for p in eval_prompts(REPO / "examples" / "demo-eval.jsonl")[:3]]
    merged = [completion(demo.url, NAME, p) for p in prompts]
    demo.mdeps.patch_spec(NAME, {"serving": {"mode": "adapter"}})
    demo.mdeps.wait_status(
        NAME,
        lambda s: (
            s.get("servingMode") == "adapter"
            and s.get("phase") == "Serving"
            and s.get("serving", {}).get("readyReplicas")
        ),
        SERVE_TIMEOUT,
        "adapter serving",
    )
    wait_until(
        lambda: all(
            p.metadata.annotations.get("lorafuse.dev/serving-mode") == "adapter"
            for p in demo.pods("serving")
        ),
        180,
        "the merged pod gone",
        2,
    )
    adapter = [
        wait_until(lambda p=p: completion(demo.url, NAME, p), 60, "completion", 2) for p in prompts
    ]
    assert merged == adapter


def test_a_spec_that_fails_validation_rolls_back_to_the_last_validated_artifact(demo: Demo):
    # Merged in bfloat16 the distributions move a little; a KL limit of zero refuses that.
    # docs/operator.md: serving returns to the last validated merged artifact.
    demo.mdeps.patch_spec(
        NAME, {"serving": {"mode": "merged"}, "dtype": "bfloat16", "validation": {"maxMeanKl": 0}}
    )
    status = demo.mdeps.wait_status(
        NAME,
        lambda s: (
            s.get("phase") == "RolledBack"
            and s.get("servingMode") == "merged"
            and s.get("serving", {}).get("readyReplicas")
        ),
        SERVE_TIMEOUT,
        "RolledBack, serving the last validated artifact",
    )
    rolled_back = condition(status, "RolledBack")
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "ValidationFailed")
    assert (status["merge"]["state"], status["merge"]["step"]) == ("Failed", "validate")
    assert status["artifact"]["digest"] == demo.first_digest
    prompt = eval_prompts(REPO / "examples" / "demo-eval.jsonl")[0]["prompt"]
    assert demo.first_completion(prompt)


def test_deleting_the_modeldeployment_removes_its_children(demo: Demo):
    demo.mdeps.delete(NAME)
    client = demo.cluster.plane.client
    selector = f"lorafuse.dev/deployment={NAME}"
    apps = kubernetes.client.AppsV1Api(client)
    batch = kubernetes.client.BatchV1Api(client)

    def children() -> list[str]:
        listed = [
            *apps.list_namespaced_deployment(demo.namespace, label_selector=selector).items,
            *batch.list_namespaced_job(demo.namespace, label_selector=selector).items,
            *demo.core.list_namespaced_config_map(demo.namespace, label_selector=selector).items,
            *demo.core.list_namespaced_service(demo.namespace, label_selector=selector).items,
            *demo.core.list_namespaced_pod(demo.namespace, label_selector=selector).items,
        ]
        return [f"{o.kind or type(o).__name__}/{o.metadata.name}" for o in listed]

    wait_until(lambda: not children(), 180, "children garbage-collected", 2)
    # The claim was given (existingClaim): it stays with its model files.
    assert demo.core.read_namespaced_persistent_volume_claim("models", demo.namespace)
