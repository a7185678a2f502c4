"""Helpers for the operator's cluster tests: CRDs, a ServiceAccount's kubeconfig, the operator
as a process, the node's image table, and waiting on a ModelDeployment's status."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from lorafuse.operator.crd import all_crds
from lorafuse.operator.rbac import operator_rules
from lorafuse.operator.spec import GROUP, PLURAL, VERSION
from tests.cluster.images import ContainerContext, Launch, run_as_given

MERGER_IMAGE = "ghcr.io/lorafuse/merger:test"
OPERATOR_IMAGE = "ghcr.io/lorafuse/operator:test"
FAKE_VLLM_IMAGE = "vllm/vllm-openai:fake"
REAL_VLLM_IMAGE = "vllm/vllm-openai:cpu"
FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")
OPERATOR_ACCOUNT = "lorafuse-operator"
HUB_SECRET = "hub-token"  # the one Secret the test operator's policy allows


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def install_crds(control_plane) -> None:
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(all_crds()))
    for crd in all_crds():
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
        )


# --- the node's images ---------------------------------------------------------------------


def fake_vllm(ctx: ContainerContext) -> Launch:
    """vLLM's flags, served by fake_vllm.py on the port the node gave the pod."""
    return Launch([sys.executable, str(FAKE_VLLM), *_remap_port(ctx)])


def real_vllm(python: str, env: dict[str, str]) -> Callable[[ContainerContext], Launch]:
    def handler(ctx: ContainerContext) -> Launch:
        module = ["-m", "vllm.entrypoints.openai.api_server"]
        return Launch([python, *module, *_remap_port(ctx)], env=env)

    return handler


def _remap_port(ctx: ContainerContext) -> list[str]:
    args = list(ctx.args)
    port = int(args[args.index("--port") + 1])
    args[args.index("--port") + 1] = str(ctx.port(port))
    args[args.index("--host") + 1] = "127.0.0.1"
    return args


def register_images(node, vllm_handler=fake_vllm) -> None:
    """Merger and operator images run this checkout's `lorafuse`; vLLM is given."""
    node.images.register("ghcr.io/lorafuse/*", run_as_given())
    node.images.register("vllm/vllm-openai:*", vllm_handler)


# --- the operator, as its ServiceAccount -----------------------------------------------------


def service_account_kubeconfig(control_plane, namespace: str, path: Path) -> Path:
    """A ServiceAccount bound to exactly the operator's rules; its token in a kubeconfig."""
    api = control_plane.client
    core = kubernetes.client.CoreV1Api(api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    meta = {"name": OPERATOR_ACCOUNT, "namespace": namespace}
    core.create_namespaced_service_account(namespace, {"metadata": meta})
    rbac.create_namespaced_role(namespace, {"metadata": meta, "rules": operator_rules(False)})
    subject = {"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": namespace}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_ACCOUNT}
    rbac.create_namespaced_role_binding(
        namespace, {"metadata": meta, "subjects": [subject], "roleRef": role_ref}
    )
    control_plane.wait_for_service_account(namespace, OPERATOR_ACCOUNT)
    account = core.read_namespaced_service_account(OPERATOR_ACCOUNT, namespace)
    secret = core.read_namespaced_secret(account.secrets[0].name, namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    return control_plane.write_kubeconfig(path, OPERATOR_ACCOUNT, token)


class OperatorProcess:
    """`lorafuse operator` watching one namespace, as a separate process (like its pod)."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        workdir: Path,
        priority: int,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.metrics_port = _free_port()
        self.log = workdir / f"operator-{priority}.log"
        argv = [
            sys.executable,
            "-c",
            "from lorafuse.cli import main; raise SystemExit(main())",
            "operator",
            f"--namespace={namespace}",
            f"--kubeconfig={kubeconfig}",
            f"--metrics-port={self.metrics_port}",
            f"--merger-image={MERGER_IMAGE}",
            f"--operator-image={OPERATOR_IMAGE}",
            f"--priority={priority}",
            # The admin policy: this harness's images, one hub-token Secret, quick retries.
            f"--allowed-image={MERGER_IMAGE}",
            "--allowed-image=vllm/vllm-openai:*",
            f"--allowed-secret={HUB_SECRET}",
            "--retry-backoff=1",
            *extra_args,  # later flags win (argparse), appended ones add to the policy
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log.open("w") as out:
            # Not from the repository root: its operator/ folder would shadow the stdlib module.
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env
            )

    def wait_active(self, timeout: float = 30) -> None:
        """Until kopf's peering lets this replica work (it starts paused, as a follower)."""
        wait_for(lambda: "Resuming operations" in self.output(), timeout, "the operator to lead")

    def reconciles(self) -> float:
        """How many reconciles this replica ran (0 while it followed)."""
        for line in self.metrics().splitlines():
            if line.startswith('lorafuse_reconciles_total{result="ok"}'):
                return float(line.split()[-1])
        return 0.0

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _free_port() -> int:
    from tests.cluster.processes import free_port

    return free_port()


# --- ModelDeployments ----------------------------------------------------------------------


class ModelDeployments:
    """Create, patch and read ModelDeployments of one namespace as the admin user."""

    def __init__(self, control_plane, namespace: str) -> None:
        self.api = kubernetes.client.CustomObjectsApi(control_plane.client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def wait_status(
        self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        def matched() -> dict[str, Any] | None:
            status = self.status(name)
            return status if check(status) else None

        try:
            return wait_for(matched, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; status: {self.status(name)}") from None


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def serving_pods(control_plane, namespace: str, name: str) -> list[Any]:
    core = kubernetes.client.CoreV1Api(control_plane.client)
    selector = f"lorafuse.dev/deployment={name},lorafuse.dev/component=serving"
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def ready_pod(control_plane, namespace: str, name: str, mode: str) -> Any:
    """The serving pod of `mode` that is Ready (there is one once a rollout completes)."""

    def find() -> Any:
        for pod in serving_pods(control_plane, namespace, name):
            annotations = pod.metadata.annotations or {}
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if ready and annotations.get("lorafuse.dev/serving-mode") == mode:
                return pod
        return None

    return wait_for(find, 60, f"a ready {mode} serving pod")


def get_json(port: int, path: str) -> Any:
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def post_json(port: int, path: str, body: dict[str, Any]) -> Any:
    import json

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


# --- the ModelDeployment the lifecycle tests start from -----------------------------------

NAME = "support-bot"


def tiny_spec(**changes) -> dict:
    spec = {
        "base": {"source": "/models/base"},
        "adapters": [{"name": "support", "source": "/models/adapters/support"}],
        "storage": {"existingClaim": "models"},
        "job": {"backoffLimit": 0},
        "serving": {
            "image": FAKE_VLLM_IMAGE,
            "gpu": {"count": 0},
            "maxModelLen": 128,
            "maxNumSeqs": 4,
            "probes": {"periodSeconds": 1},
        },
    }
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    return spec


BASE_COMMIT = "b" * 40
ADAPTER_COMMIT = "a" * 40


def offline_hub(node, namespace: str, tiny_sources: Path) -> None:
    """The tiny base (acme/tiny) and its adapter (acme/support) in a Hugging Face cache on
    the model volume (the Job's HF_HOME), each with branch main at a known commit, so that
    a fetch with HF_HUB_OFFLINE=1 resolves them without a network."""
    hf_home = node.claim_dir(namespace, "models") / "hf"
    for repo, files, commit in (
        ("acme/tiny", tiny_sources / "base", BASE_COMMIT),
        ("acme/support", tiny_sources / "adapters" / "support", ADAPTER_COMMIT),
    ):
        storage = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
        shutil.copytree(files, storage / "snapshots" / commit)
        (storage / "refs").mkdir()
        (storage / "refs" / "main").write_text(commit)


def serving_pinned_deployment(control_plane, namespace: str) -> Any:
    """The adapter-mode Deployment, checked to fetch the adapter and load the base at the
    commits offline_hub resolves (not at the branch names the spec gives)."""
    apps = kubernetes.client.AppsV1Api(control_plane.client)
    deployment = apps.read_namespaced_deployment(f"{NAME}-vllm", namespace)
    pod = deployment.spec.template.spec
    (fetch,) = pod.init_containers
    cached = f"/cache/adapters/acme--support--{ADAPTER_COMMIT}"
    assert fetch.args == ["acme/support", ADAPTER_COMMIT, cached]
    args = pod.containers[0].args
    assert args[args.index("--model") + 1] == "acme/tiny"
    assert args[args.index("--revision") + 1] == BASE_COMMIT
    return deployment


# Merged in bfloat16, the model's next-token distributions move a little away from base +
# adapters (float32); a limit of zero KL refuses any move, the default allows this one.
REJECTED_VALIDATION = {"maxMeanKl": 0}
ACCEPTED_VALIDATION = {"maxMeanKl": 0.25}


def vllm_python() -> Path:
    """The vLLM venv of scripts/vllm-venv.sh (or $LORAFUSE_VLLM_PYTHON); skips without one."""
    import pytest

    from lorafuse.serving.local import find_vllm_python

    python = find_vllm_python()
    if python is None:
        pytest.skip("no vLLM venv: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON")
    return python
