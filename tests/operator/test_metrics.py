"""The operator's per-ModelDeployment series: serving mode and the served artifact's age."""

from __future__ import annotations

from lorafuse.operator.metrics import Metrics
from lorafuse.operator.reconcile import _published_at
from lorafuse.operator.spec import ArtifactStatus, HistoryEntry, ModelDeploymentStatus

ARTIFACT = ArtifactStatus(name="bot--abc", path="/models/artifacts/bot--abc")


def _value(metrics: Metrics, series: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(series, labels)


def test_the_serving_mode_gauge_is_one_for_the_mode_served():
    metrics = Metrics()
    metrics.set_serving_mode("llm", "bot", "adapter")
    mode = "lorafuse_deployment_serving_mode"
    assert _value(metrics, mode, namespace="llm", name="bot", mode="adapter") == 1
    assert _value(metrics, mode, namespace="llm", name="bot", mode="merged") == 0


def test_nothing_served_sets_every_mode_to_zero():
    metrics = Metrics()
    metrics.set_serving_mode("llm", "bot", None)
    mode = "lorafuse_deployment_serving_mode"
    assert _value(metrics, mode, namespace="llm", name="bot", mode="merged") == 0


def test_a_deleted_deployment_loses_its_series():
    metrics = Metrics()
    metrics.set_serving_mode("llm", "bot", "merged")
    metrics.artifact_published.labels("llm", "bot").set(1.0)
    metrics.forget("llm", "bot")
    mode = "lorafuse_deployment_serving_mode"
    assert _value(metrics, mode, namespace="llm", name="bot", mode="merged") is None
    published = "lorafuse_artifact_published_timestamp_seconds"
    assert _value(metrics, published, namespace="llm", name="bot") is None


def test_the_served_artifact_is_dated_by_its_history_entry():
    entry = HistoryEntry(
        name=ARTIFACT.name, path=ARTIFACT.path, published_at="1970-01-02T00:00:00Z"
    )
    status = ModelDeploymentStatus(serving_mode="merged", artifact=ARTIFACT, history=[entry])
    assert _published_at(status) == 86400


def test_adapter_serving_has_no_artifact_age():
    entry = HistoryEntry(
        name=ARTIFACT.name, path=ARTIFACT.path, published_at="1970-01-02T00:00:00Z"
    )
    status = ModelDeploymentStatus(serving_mode="adapter", artifact=ARTIFACT, history=[entry])
    assert _published_at(status) is None


def test_an_unreadable_date_gives_no_age():
    entry = HistoryEntry(name=ARTIFACT.name, path=ARTIFACT.path, published_at="yesterday")
    status = ModelDeploymentStatus(serving_mode="merged", artifact=ARTIFACT, history=[entry])
    assert _published_at(status) is None
