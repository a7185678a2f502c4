"""What the operator may do in the cluster, as data: the chart renders its Role from it."""

from __future__ import annotations

from typing import Any

READ = ["get", "list", "watch"]
WRITE = ["create", "patch"]

# Everything the operator touches in a namespace it watches. Children are deleted by the
# garbage collector through owner references, so only Jobs and plan ConfigMaps of
# superseded plans are deleted by the operator itself.
NAMESPACED_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["lorafuse.dev"], "resources": ["modeldeployments"], "verbs": READ},
    {
        "apiGroups": ["lorafuse.dev"],
        "resources": ["modeldeployments/status"],
        "verbs": ["get", "patch"],
    },
    # Children's owner references block the owner's deletion until they are gone; clusters
    # with the OwnerReferencesPermissionEnforcement admission plugin require this for that.
    {
        "apiGroups": ["lorafuse.dev"],
        "resources": ["modeldeployments/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": [*READ, "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": [*READ, "create", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*READ, "create", "patch"]},
    {
        "apiGroups": [""],
        "resources": ["services", "persistentvolumeclaims"],
        "verbs": [*READ, "create", "patch"],
    },
    # Optional serving children, deleted when the spec turns their feature off.
    *(
        {"apiGroups": [group], "resources": [resource], "verbs": [*READ, *WRITE, "delete"]}
        for group, resource in (
            ("autoscaling", "horizontalpodautoscalers"),
            ("policy", "poddisruptionbudgets"),
            ("networking.k8s.io", "ingresses"),
        )
    ),
    # Job pods: progress (which step runs) and the result in the termination message.
    {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": [*READ, "create", "patch"]},
]

# Only when the operator watches every namespace (its peering object is then cluster-wide).
CLUSTER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": [*READ, "create", "patch"],
    },
]


def operator_rules(clusterwide: bool) -> list[dict[str, Any]]:
    """The rules of the ClusterRole (clusterwide) or of the Role in each watched namespace."""
    if clusterwide:
        rules = [r for r in NAMESPACED_RULES if r["resources"] != ["kopfpeerings"]]
        return rules + CLUSTER_RULES
    return list(NAMESPACED_RULES)
