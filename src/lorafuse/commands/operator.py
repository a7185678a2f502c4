"""`lorafuse operator`: run the ModelDeployment operator (kopf, in this process)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random

from lorafuse.errors import UserError
from lorafuse.operator import naming

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="0 turns metrics off")
    parser.add_argument(
        "--merger-image",
        default=os.environ.get("LORAFUSE_MERGER_IMAGE", naming.DEFAULT_MERGER_IMAGE),
        help="image of the merge Job steps (env LORAFUSE_MERGER_IMAGE)",
    )
    parser.add_argument(
        "--operator-image",
        default=os.environ.get("LORAFUSE_OPERATOR_IMAGE", naming.DEFAULT_OPERATOR_IMAGE),
        help="slim image that verifies artifacts in serving pods (env LORAFUSE_OPERATOR_IMAGE)",
    )
    policy = parser.add_argument_group("admin policy (what ModelDeployments may use)")
    policy.add_argument(
        "--allowed-image",
        action="append",
        default=[],
        metavar="PATTERN",
        help="image pattern (fnmatch) the Job and vLLM may use (repeatable); "
        f"default: the merger image and {naming.DEFAULT_VLLM_IMAGE}",
    )
    policy.add_argument(
        "--allowed-secret",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Secret name pattern spec.credentials and env secretKeyRefs may name (repeatable); "
        "default: none",
    )
    policy.add_argument(
        "--allowed-service-account",
        action="append",
        default=[],
        metavar="PATTERN",
        help="ServiceAccount name pattern a podTemplate.serviceAccountName may name "
        "(repeatable); default: default",
    )
    policy.add_argument(
        "--allow-gguf-k-quants",
        action="store_true",
        help="allow quantization.method gguf-q4_k_m and gguf-q5_k_m: only for a merger image "
        "with llama-cpp-python (lorafuse's gguf-kquants extra)",
    )
    policy.add_argument(
        "--forbid-vllm-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a vLLM flag extraArgs may not carry, besides those the operator owns (repeatable)",
    )
    policy.add_argument(
        "--job-cpu-request", default="1", help="CPU request of merge steps without resources"
    )
    policy.add_argument(
        "--job-memory-request",
        default="4Gi",
        help="memory request of merge steps without resources",
    )
    policy.add_argument(
        "--transient-retries",
        type=int,
        default=3,
        help="retries of a Job evicted, OOMKilled, past its deadline or on a lost node",
    )
    policy.add_argument(
        "--retry-backoff",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait before the first such retry; doubled after each",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="leader-election priority; the highest live replica works (default: random)",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="no leader election (a single replica)"
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="default: in-cluster, then $KUBECONFIG/~/.kube/config"
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve kopf's health endpoint here, e.g. http://0.0.0.0:8080/healthz",
    )


def run(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes import client, config

    from lorafuse.operator.handlers import Controller, configure_settings, ensure_peering, register
    from lorafuse.operator.kube import Kube
    from lorafuse.operator.metrics import Metrics
    from lorafuse.operator.reconcile import Reconciler

    if logging.getLogger().level > logging.DEBUG:
        # kopf logs every handler call at INFO; transitions are logged (and posted) by us.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if not 0 <= args.metrics_port <= 65535:
        raise UserError(f"--metrics-port {args.metrics_port}: not a port number")
    configuration = _load_config(config, args.kubeconfig)
    kube = Kube(client.ApiClient(configuration))
    namespaces: list[str] = list(dict.fromkeys(args.namespace))
    clusterwide = not namespaces
    metrics = Metrics()
    reconciler = Reconciler(
        kube, _images(args), metrics, policy=admin_policy(args), retries=_retries(args)
    )
    controller = Controller(reconciler)
    registry = kopf.OperatorRegistry()
    register(registry, controller)

    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    settings = kopf.OperatorSettings()
    configure_settings(settings, priority, clusterwide)

    @kopf.on.login(registry=registry)
    def login(**_: object) -> kopf.ConnectionInfo:
        # kopf's own connection (watches, peering) uses the same credentials as ours.
        return _connection_info(kopf, configuration)

    if not args.standalone:
        ensure_peering(kube, namespaces, clusterwide)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
        log.info("metrics on :%d/metrics", args.metrics_port)
    log.info(
        "watching %s, leader-election priority %s",
        ", ".join(namespaces) or "all namespaces",
        "off" if args.standalone else priority,
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=clusterwide,
            namespaces=namespaces,
            standalone=args.standalone,
            peering_name=None if args.standalone else naming.PEERING_NAME,
            priority=priority,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def admin_policy(args: argparse.Namespace):
    """The installer's policy from the flags (the chart renders them from its values)."""
    from lorafuse.operator.policy import OPERATOR_OWNED_VLLM_ARGS, Policy

    images = args.allowed_image or [args.merger_image, naming.DEFAULT_VLLM_IMAGE]
    return Policy(
        allowed_images=tuple(images),
        allowed_secrets=tuple(args.allowed_secret),
        forbidden_vllm_args=(*OPERATOR_OWNED_VLLM_ARGS, *args.forbid_vllm_arg),
        merger_image=args.merger_image,
        gguf_k_quants=args.allow_gguf_k_quants,
        allowed_service_accounts=tuple(args.allowed_service_account or ["default"]),
    )


def _images(args: argparse.Namespace):
    from lorafuse.operator.children.common import Images

    requests = {"cpu": args.job_cpu_request, "memory": args.job_memory_request}
    return Images(
        args.merger_image,
        args.operator_image,
        job_requests=tuple((k, v) for k, v in requests.items() if v),
    )


def _retries(args: argparse.Namespace):
    from lorafuse.operator.lifecycle import RetryPolicy

    if args.transient_retries < 0 or args.retry_backoff < 0:
        raise UserError("--transient-retries and --retry-backoff must not be negative")
    return RetryPolicy(args.transient_retries, args.retry_backoff)


def _load_config(config, kubeconfig: str | None):
    from kubernetes import client

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, FileNotFoundError) as exc:
            raise UserError(f"no cluster credentials: {exc}") from exc
    return configuration


def _connection_info(kopf, configuration):
    """The client's configuration as kopf's credentials (as kopf.login_via_client reads it)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
