"""The installer's admin policy, and the pure check of a spec against it (spec → violations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from lorafuse.merger.engine.choices import GGUF_K_QUANTS
from lorafuse.operator import naming
from lorafuse.operator.spec import ModelDeploymentSpec, PodTemplateSpec

# vLLM arguments that decide what is served, where, and how far it is trusted: the operator
# sets them from the spec; in extraArgs they would silently replace the verified artifact.
OPERATOR_OWNED_VLLM_ARGS = (
    "--model",
    "--served-model-name",
    "--lora-modules",
    "--enable-lora",
    "--port",
    "--host",
    "--uds",
    "--trust-remote-code",
    "--download-dir",
    "--tokenizer",
    "--tokenizer-mode",
    "--revision",
    "--code-revision",
    "--tokenizer-revision",
    "--load-format",
    "--model-loader-extra-config",
    "--hf-overrides",
    "--allowed-local-media-path",
    "--api-key",
    "--ssl-keyfile",
    "--ssl-certfile",
    "--middleware",
    "--chat-template",
    "--tool-parser-plugin",
    "--worker-extension-cls",
    "--worker-cls",
    "--logits-processors",
    "--config",
)


# Pod fields the operator renders itself: what runs (image, command, args), the model volume
# and the security context floor. A podTemplate setting one is refused, never merged.
OPERATOR_OWNED_POD_FIELDS = (
    "containers",
    "initContainers",
    "image",
    "command",
    "args",
    "volumes",
    "volumeMounts",
    "securityContext",
    "metadata",
    "spec",
)
# Label and annotation keys the operator sets and selects on.
OPERATOR_OWNED_KEYS = (
    "lorafuse.dev/*",
    "app.kubernetes.io/name",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
)


@dataclass(frozen=True)
class Policy:
    """What the operator's installer allows ModelDeployments to use (flags / chart values)."""

    allowed_images: tuple[str, ...] = (naming.DEFAULT_MERGER_IMAGE, naming.DEFAULT_VLLM_IMAGE)
    allowed_secrets: tuple[str, ...] = ()  # name patterns; none by default
    forbidden_vllm_args: tuple[str, ...] = OPERATOR_OWNED_VLLM_ARGS
    merger_image: str = naming.DEFAULT_MERGER_IMAGE  # what spec.job.image defaults to
    # gguf-q4_k_m / gguf-q5_k_m need llama.cpp's quantizer (llama-cpp-python), which the
    # merger image does not have; allow them only for an image that does.
    gguf_k_quants: bool = False
    # ServiceAccount name patterns podTemplate.serviceAccountName may name: pods run with
    # that account's token, so by default only the namespace's `default` (what they get unset).
    allowed_service_accounts: tuple[str, ...] = ("default",)


@dataclass(frozen=True)
class Violation:
    field: str  # e.g. spec.serving.image
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class _Found:
    items: list[Violation] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append(Violation(where, message))


def violations(spec: ModelDeploymentSpec, policy: Policy) -> list[Violation]:
    """Every field of `spec` the policy does not allow; empty when the spec may run."""
    found = _Found()
    _check_image(found, "spec.job.image", spec.job.image or policy.merger_image, policy)
    _check_image(found, "spec.serving.image", spec.serving.image, policy)
    _check_env(found, "spec.job.env", spec.job.env, policy)
    _check_env(found, "spec.serving.env", spec.serving.env, policy)
    if spec.credentials and not _allowed_secret(spec.credentials.secret_name, policy):
        found.add(
            "spec.credentials.secretName",
            f"Secret {spec.credentials.secret_name!r} is not in the operator's allowed Secrets",
        )
    tls = spec.serving.ingress.tls_secret_name if spec.serving.ingress else None
    if tls and not _allowed_secret(tls, policy):
        found.add(
            "spec.serving.ingress.tlsSecretName",
            f"Secret {tls!r} is not in the operator's allowed Secrets",
        )
    _check_pod_template(found, "spec.serving.podTemplate", spec.serving.pod_template, policy)
    _check_pod_template(found, "spec.job.podTemplate", spec.job.pod_template, policy)
    method = spec.quantization.method
    if method in GGUF_K_QUANTS and not policy.gguf_k_quants:
        found.add(
            "spec.quantization.method",
            f"{method} needs llama.cpp's quantizer (llama-cpp-python), which the merger image "
            "does not have; use gguf-q8_0 or gguf-q4_0, or an image with it and the chart's "
            "policy.ggufKQuants: true",
        )
    for index, arg in enumerate(spec.serving.extra_args):
        if owned := _owned_arg(arg, policy):
            found.add(f"spec.serving.extraArgs[{index}]", f"{owned} is set by the operator")
    return found.items


def _check_image(found: _Found, where: str, image: str, policy: Policy) -> None:
    if not any(fnmatchcase(image, pattern) for pattern in policy.allowed_images):
        allowed = ", ".join(policy.allowed_images) or "none"
        found.add(where, f"image {image!r} is not allowed (allowed: {allowed})")


def _check_env(found: _Found, where: str, env: list[dict[str, Any]], policy: Policy) -> None:
    for index, var in enumerate(env):
        source = var.get("valueFrom") or {}
        secret = (source.get("secretKeyRef") or {}).get("name")
        if secret is not None and not _allowed_secret(secret, policy):
            found.add(
                f"{where}[{index}].valueFrom.secretKeyRef",
                f"Secret {secret!r} is not in the operator's allowed Secrets "
                "(use spec.credentials for the hub token)",
            )


def _check_pod_template(
    found: _Found, where: str, template: PodTemplateSpec, policy: Policy
) -> None:
    for name in template.model_extra or {}:
        if name in OPERATOR_OWNED_POD_FIELDS:
            found.add(
                f"{where}.{name}",
                "is the operator's (image, command, args, the model volume and the security "
                "context cannot be overridden)",
            )
        else:
            found.add(f"{where}.{name}", "is not a podTemplate field")
    for section, keys in (("labels", template.labels), ("annotations", template.annotations)):
        for key in keys:
            if any(fnmatchcase(key, owned) for owned in OPERATOR_OWNED_KEYS):
                found.add(f"{where}.{section}[{key}]", "is set by the operator")
    account = template.service_account_name
    if account is not None and not any(
        fnmatchcase(account, pattern) for pattern in policy.allowed_service_accounts
    ):
        allowed = ", ".join(policy.allowed_service_accounts) or "none"
        found.add(
            f"{where}.serviceAccountName",
            f"ServiceAccount {account!r} is not in the operator's allowed ServiceAccounts "
            f"(allowed: {allowed})",
        )
    for index, secret in enumerate(template.image_pull_secrets):
        if not _allowed_secret(secret.name, policy):
            found.add(
                f"{where}.imagePullSecrets[{index}]",
                f"Secret {secret.name!r} is not in the operator's allowed Secrets",
            )


def _allowed_secret(name: str, policy: Policy) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in policy.allowed_secrets)


def _owned_arg(arg: str, policy: Policy) -> str | None:
    """The operator-owned flag `arg` is (`--model`, `--model=x`, `--model x`), if any."""
    words = arg.split("=", 1)[0].split()
    flag = words[0].replace("_", "-") if words else ""
    if not flag.startswith("--") or len(flag) < 3:
        return None
    # argparse accepts any unambiguous prefix of a long option: --trust-remote is enough.
    return next((owned for owned in policy.forbidden_vllm_args if owned.startswith(flag)), None)
