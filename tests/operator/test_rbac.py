"""The operator's RBAC rules (the chart renders them) cover what the reconcile does."""

from __future__ import annotations

import pytest

from lorafuse.operator.kube import APPLIED
from lorafuse.operator.rbac import operator_rules


def _allows(rules, group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


@pytest.mark.parametrize("clusterwide", [True, False])
def test_every_applied_kind_can_be_created_and_patched(clusterwide):
    rules = operator_rules(clusterwide)
    for group, resource in APPLIED.values():
        assert _allows(rules, group, resource, "create"), resource
        assert _allows(rules, group, resource, "patch"), resource


def test_the_operator_never_deletes_what_the_garbage_collector_removes():
    rules = operator_rules(True)
    for resource in ("deployments", "services", "persistentvolumeclaims", "modeldeployments"):
        group = {"deployments": "apps", "modeldeployments": "lorafuse.dev"}.get(resource, "")
        assert not _allows(rules, group, resource, "delete")


def test_the_model_deployment_spec_is_read_only_and_only_status_is_written():
    rules = operator_rules(False)
    assert not _allows(rules, "lorafuse.dev", "modeldeployments", "patch")
    assert _allows(rules, "lorafuse.dev", "modeldeployments/status", "patch")


def test_peering_is_cluster_scoped_only_when_watching_all_namespaces():
    assert _allows(operator_rules(True), "kopf.dev", "clusterkopfpeerings", "patch")
    assert not _allows(operator_rules(False), "kopf.dev", "clusterkopfpeerings", "get")
    assert _allows(operator_rules(False), "kopf.dev", "kopfpeerings", "patch")
