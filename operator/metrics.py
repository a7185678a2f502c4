"""Prometheus metrics of the operator, served over HTTP by `lorafuse operator --metrics-port`."""

from __future__ import annotations

import contextlib
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lorafuse.operator.spec import Phase, ServingMode

PHASES: tuple[Phase, ...] = get_args(Phase)
MODES: tuple[ServingMode, ...] = ("merged", "adapter")


class Metrics:
    """One set of collectors on its own registry (so tests and several operators do not clash)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "lorafuse_reconciles", "Reconciles of ModelDeployments", ["result"], registry=r
        )
        self.errors = Counter(
            "lorafuse_reconcile_errors", "Reconciles that raised", ["reason"], registry=r
        )
        self.duration = Histogram(
            "lorafuse_reconcile_duration_seconds", "Time one reconcile took", registry=r
        )
        self.phase = Gauge(
            "lorafuse_deployment_phase",
            "1 for the phase a ModelDeployment is in, 0 for the others",
            ["namespace", "name", "phase"],
            registry=r,
        )
        self.rollbacks = Counter(
            "lorafuse_rollbacks", "Automatic rollbacks to adapter serving", ["reason"], registry=r
        )
        self.merge_duration = Histogram(
            "lorafuse_merge_duration_seconds",
            "Wall time of merge Jobs, start to end",
            ["outcome"],
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")),
            registry=r,
        )
        self.artifact_bytes = Gauge(
            "lorafuse_artifact_bytes",
            "Size of the artifact a ModelDeployment serves (merged mode)",
            ["namespace", "name"],
            registry=r,
        )

        self.serving_mode = Gauge(
            "lorafuse_deployment_serving_mode",
            "1 for the mode a ModelDeployment serves in (merged, adapter), 0 for the other; "
            "both 0 while nothing serves",
            ["namespace", "name", "mode"],
            registry=r,
        )
        self.artifact_published = Gauge(
            "lorafuse_artifact_published_timestamp_seconds",
            "When the artifact a ModelDeployment serves was published (its age: time() - this)",
            ["namespace", "name"],
            registry=r,
        )

        self.reclaimed_bytes = Counter(
            "lorafuse_artifact_reclaimed_bytes",
            "File bytes that prune Jobs freed on a ModelDeployment's model volume",
            ["namespace", "name"],
            registry=r,
        )
        self.artifacts_pruned = Counter(
            "lorafuse_artifacts_pruned",
            "Superseded artifacts prune Jobs removed (spec.storage.keepArtifacts)",
            ["namespace", "name"],
            registry=r,
        )

    def set_phase(self, namespace: str, name: str, phase: Phase) -> None:
        for each in PHASES:
            self.phase.labels(namespace, name, each).set(1 if each == phase else 0)

    def set_serving_mode(self, namespace: str, name: str, mode: ServingMode | None) -> None:
        for each in MODES:
            self.serving_mode.labels(namespace, name, each).set(1 if each == mode else 0)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the per-resource series of a deleted ModelDeployment."""
        for each in PHASES:
            self._remove(self.phase, namespace, name, each)
        for each in MODES:
            self._remove(self.serving_mode, namespace, name, each)
        self._remove(self.artifact_bytes, namespace, name)
        self._remove(self.artifact_published, namespace, name)
        self._remove(self.reclaimed_bytes, namespace, name)
        self._remove(self.artifacts_pruned, namespace, name)

    @staticmethod
    def _remove(gauge: Gauge | Counter, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
