"""The chart's monitoring: a PodMonitor for vLLM pods and the Grafana dashboard ConfigMap,
both off by default, and a dashboard that only queries series that exist."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from lorafuse.operator.metrics import Metrics
from tests.operator.test_chart import CHART, REPO, by_kind, template

MONITORING_API = ["--api-versions", "monitoring.coreos.com/v1"]
# vLLM (0.11) series the dashboard reads; kv_cache_usage_perc was gpu_cache_usage_perc before.
VLLM_SERIES = {
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "avg", "time", "or"}


@pytest.fixture(scope="module")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def _dashboard() -> dict:
    return json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def _queried_series(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    without_labels = [re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", e) for e in exprs]
    names = {n for e in without_labels for n in re.findall(r"[a-z_:][a-z0-9_:]*", e)}
    return (
        names
        - PROMQL_WORDS
        - {"le", "outcome", "reason", "namespace", "name", "phase", "mode", "modeldeployment"}
    )


def _operator_series() -> set[str]:
    metrics = Metrics()
    metrics.set_phase("ns", "md", "Serving")
    metrics.set_serving_mode("ns", "md", "merged")
    metrics.artifact_bytes.labels("ns", "md").set(1)
    metrics.artifact_published.labels("ns", "md").set(1)
    metrics.merge_duration.labels("succeeded").observe(1)
    metrics.rollbacks.labels("MergeFailed").inc()
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def test_the_pod_monitor_is_off_by_default(helm):
    assert not by_kind(template(helm, *MONITORING_API), "PodMonitor")


def test_the_pod_monitor_needs_the_prometheus_operator_api(helm):
    assert not by_kind(template(helm, "--set", "podMonitor.enabled=true"), "PodMonitor")


def test_the_pod_monitor_scrapes_vllm_pods_labelled_by_their_model_deployment(helm):
    objects = template(helm, "--set", "podMonitor.enabled=true", *MONITORING_API)
    (monitor,) = by_kind(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "lorafuse",
        "app.kubernetes.io/component": "serving",
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_lorafuse_dev_deployment"],
            "targetLabel": "modeldeployment",
        }
    ]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_the_pod_monitor_looks_only_in_watched_namespaces(helm):
    args = ["--set", "podMonitor.enabled=true", "--set", "watchNamespaces={team-a}"]
    (monitor,) = by_kind(template(helm, *args, *MONITORING_API), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_the_operator_service_monitor_keeps_the_series_own_namespace_label(helm):
    args = ["--set", "serviceMonitor.enabled=true", *MONITORING_API]
    (monitor,) = by_kind(template(helm, *args), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_the_dashboard_is_off_by_default(helm):
    assert not [
        o for o in by_kind(template(helm), "ConfigMap") if "dashboard" in o["metadata"]["name"]
    ]


def test_the_dashboard_config_map_carries_the_sidecar_label_and_the_json(helm):
    objects = template(helm, "--set", "grafanaDashboard.enabled=true")
    (config_map,) = [
        o for o in by_kind(objects, "ConfigMap") if "dashboard" in o["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["lorafuse.json"]) == _dashboard()


def test_the_dashboard_queries_only_series_that_exist():
    assert _queried_series(_dashboard()) - _operator_series() - VLLM_SERIES == set()


def test_the_dashboard_covers_merges_phases_artifacts_and_vllm():
    queried = _queried_series(_dashboard())
    assert {
        "lorafuse_merge_duration_seconds_bucket",
        "lorafuse_merge_duration_seconds_count",
        "lorafuse_deployment_phase",
        "lorafuse_deployment_serving_mode",
        "lorafuse_rollbacks_total",
        "lorafuse_artifact_bytes",
        "lorafuse_artifact_published_timestamp_seconds",
        "vllm:generation_tokens_total",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:kv_cache_usage_perc",
    } <= queried


def test_vllm_panels_are_per_model_deployment():
    vllm = [t["expr"] for p in _dashboard()["panels"] for t in p["targets"] if "vllm:" in t["expr"]]
    assert vllm and all("modeldeployment" in expr for expr in vllm)
