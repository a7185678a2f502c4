"""Install the chart with the locally built images, and talk to a served model."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import REPO, Cluster

RELEASE = "lorafuse"
RELEASE_NAMESPACE = "lorafuse-system"


def helm_binary() -> str:
    """The pinned helm of scripts/helm.sh (cached)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip().splitlines()[-1]


def split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', 'tag')."""
    repository, _, tag = image.rpartition(":")
    return repository, tag


def helm_install(cluster: Cluster) -> None:
    """`helm install` of charts/lorafuse, one replica, the images scripts/images.sh built.

    The chart's image policy then allows exactly these merger and vLLM images.
    """
    operator_repo, operator_tag = split_image(cluster.images["operator"])
    merger_repo, merger_tag = split_image(cluster.images["merger"])
    vllm_repo, vllm_tag = split_image(cluster.images["vllm"])
    vllm_repo, vllm_tag = split_image(cluster.images["vllm"])  # the admin policy allows it
    argv = [
        helm_binary(),
        "install",
        RELEASE,
        str(REPO / "charts" / "lorafuse"),
        f"--kubeconfig={cluster.plane.kubeconfig}",
        f"--namespace={RELEASE_NAMESPACE}",
        "--create-namespace",
        f"--set=operator.image.repository={operator_repo}",
        f"--set=operator.image.tag={operator_tag}",
        "--set=operator.image.pullPolicy=Never",
        f"--set=merger.image.repository={merger_repo}",
        f"--set=merger.image.tag={merger_tag}",
        f"--set=vllm.image.repository={vllm_repo}",
        f"--set=vllm.image.tag={vllm_tag}",
        f"--set=vllm.image.repository={vllm_repo}",
        f"--set=vllm.image.tag={vllm_tag}",
        "--set=operator.replicas=1",
        "--wait",
        "--timeout=5m",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        raise RuntimeError(f"helm install failed: {proc.stderr.strip()}")


def helm_uninstall(cluster: Cluster) -> None:
    """`helm uninstall` of the release (the CRDs stay, as docs/install.md says)."""
    subprocess.run(
        [
            helm_binary(),
            "uninstall",
            RELEASE,
            f"--kubeconfig={cluster.plane.kubeconfig}",
            f"--namespace={RELEASE_NAMESPACE}",
            "--wait",
            "--timeout=2m",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def post_json(url: str, body: dict[str, Any], timeout: float = 60) -> Any:
    """POST JSON to a Service of the test cluster; the decoded answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def completion(base_url: str, model: str, prompt: str, max_tokens: int = 16) -> str:
    """Greedy completion text from an OpenAI-compatible server."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return post_json(f"{base_url}/v1/completions", body)["choices"][0]["text"]


def eval_prompts(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
