"""Scaling on a real API server: `kubectl scale mdep`, the scale subresource an HPA reads, and
the rendered HorizontalPodAutoscaler accepted by server-side apply."""

from __future__ import annotations

import json

import kubernetes

from lorafuse.operator.children.common import Images, Owner, ServedApis
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.kube import Kube
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import GROUP, PLURAL, VERSION, ModelDeploymentSpec
from tests.operator.cluster import ModelDeployments

SPEC = {
    "base": {"source": "/models/base"},
    "adapters": [{"name": "support", "source": "/models/adapters/support"}],
}
V1BETA1 = ServedApis(pod_disruption_budget="policy/v1beta1")  # Kubernetes 1.20
MERGED = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a--1", "sha256:ab")


def _scale(control_plane, namespace: str, name: str) -> dict:
    api = kubernetes.client.CustomObjectsApi(control_plane.api_client())
    return api.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name)


def _rendered(namespace: str, uid: str, raw: dict) -> list[dict]:
    spec = ModelDeploymentSpec.model_validate(raw)
    owner = Owner("scaled", namespace, uid)
    return desired_objects(
        owner, spec, plan_for(spec), Images(), merge=False, serving=MERGED, apis=V1BETA1
    )


def test_kubectl_scale_sets_the_serving_replicas(control_plane, namespace, crds):
    mdeps = ModelDeployments(control_plane, namespace)
    mdeps.create("scaled", SPEC)
    control_plane.kubectl("scale", "mdep", "scaled", "--replicas", "3", "-n", namespace)
    assert mdeps.get("scaled")["spec"]["serving"]["replicas"] == 3


def test_the_scale_subresource_reports_status_replicas_and_selector(control_plane, namespace, crds):
    ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    serving = {"replicas": 2, "selector": "lorafuse.dev/component=serving"}
    Kube(control_plane.api_client()).apply_status(namespace, "scaled", {"serving": serving})
    scale = _scale(control_plane, namespace, "scaled")
    assert scale["status"] == {"replicas": 2, "selector": "lorafuse.dev/component=serving"}


def test_the_rendered_autoscaler_is_accepted_and_owns_the_deployment_replicas(
    control_plane, namespace, crds
):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    raw = {**SPEC, "serving": {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}}
    kube = Kube(control_plane.api_client())
    for obj in _rendered(namespace, created["metadata"]["uid"], raw):
        kube.apply(obj)
    hpa = kubernetes.client.CustomObjectsApi(
        control_plane.api_client()
    ).get_namespaced_custom_object(
        "autoscaling", "v2beta2", namespace, "horizontalpodautoscalers", "scaled-vllm"
    )
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    managed = json.loads(
        control_plane.kubectl(
            "get",
            "deployment",
            "scaled-vllm",
            "-n",
            namespace,
            "-o",
            "json",
            "--show-managed-fields",
        ).stdout
    )["metadata"]["managedFields"]
    ours = next(m for m in managed if m["manager"] == "lorafuse-operator")
    assert "f:replicas" not in json.dumps(ours["fieldsV1"].get("f:spec", {}))


def test_turning_autoscaling_off_deletes_our_autoscaler(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    uid = created["metadata"]["uid"]
    raw = {**SPEC, "serving": {"autoscaling": {"maxReplicas": 5}}}
    kube = Kube(control_plane.api_client())
    for obj in _rendered(namespace, uid, raw):
        kube.apply(obj)
    assert kube.delete_if_ours(
        "HorizontalPodAutoscaler", namespace, "scaled-vllm", uid, "autoscaling/v2beta2"
    )
    assert (
        kube.foreign(
            "HorizontalPodAutoscaler", namespace, "scaled-vllm", uid, "autoscaling/v2beta2"
        )
        is None
    )


def test_discovery_finds_the_disruption_budget_version_of_kubernetes_1_20(control_plane):
    assert Kube(control_plane.api_client()).served_apis().pod_disruption_budget == (
        "policy/v1beta1"
    )


def test_the_rendered_disruption_budget_is_accepted_in_the_served_version(
    control_plane, namespace, crds
):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    kube = Kube(control_plane.api_client())
    raw = {**SPEC, "serving": {"replicas": 2, "disruptionBudget": {"maxUnavailable": "50%"}}}
    spec = ModelDeploymentSpec.model_validate(raw)
    owner = Owner("scaled", namespace, created["metadata"]["uid"])
    objects = desired_objects(
        owner,
        spec,
        plan_for(spec),
        Images(),
        merge=False,
        serving=MERGED,
        apis=kube.served_apis(),
    )
    for obj in objects:
        kube.apply(obj)
    pdb = kubernetes.client.CustomObjectsApi(
        control_plane.api_client()
    ).get_namespaced_custom_object(
        "policy", "v1beta1", namespace, "poddisruptionbudgets", "scaled-vllm"
    )
    assert pdb["spec"]["maxUnavailable"] == "50%"


def test_the_rendered_ingress_is_accepted_by_server_side_apply(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    ingress = {"host": "llm.example.com", "className": "nginx", "tlsSecretName": "llm-tls"}
    raw = {**SPEC, "serving": {"ingress": ingress}}
    kube = Kube(control_plane.api_client())
    for obj in _rendered(namespace, created["metadata"]["uid"], raw):
        kube.apply(obj)
    stored = kubernetes.client.NetworkingV1Api(control_plane.api_client()).read_namespaced_ingress(
        "scaled", namespace
    )
    assert stored.spec.rules[0].http.paths[0].backend.service.name == "scaled"
    assert stored.spec.tls[0].secret_name == "llm-tls"


def test_pods_with_a_pod_template_are_accepted_by_server_side_apply(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    template = {
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"lorafuse.dev/deployment": "scaled"}},
                        },
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"lorafuse.dev/deployment": "scaled"}},
            }
        ],
        "imagePullSecrets": [{"name": "registry-pull"}],
        "labels": {"team": "search"},
    }
    raw = {**SPEC, "serving": {"podTemplate": template}, "job": {"podTemplate": template}}
    spec = ModelDeploymentSpec.model_validate(raw)
    owner = Owner("scaled", namespace, created["metadata"]["uid"])
    kube = Kube(control_plane.api_client())
    for obj in desired_objects(
        owner, spec, plan_for(spec), Images(), merge=True, serving=MERGED, apis=V1BETA1
    ):
        kube.apply(obj)
    apps = kubernetes.client.AppsV1Api(control_plane.api_client())
    pod = apps.read_namespaced_deployment("scaled-vllm", namespace).spec.template
    assert pod.metadata.labels["team"] == "search"
    assert pod.spec.topology_spread_constraints[0].max_skew == 1


def test_the_api_server_keeps_an_override_attempt_for_the_operator_to_refuse(
    control_plane, namespace, crds
):
    raw = {**SPEC, "serving": {"podTemplate": {"securityContext": {"runAsUser": 0}}}}
    created = ModelDeployments(control_plane, namespace).create("scaled", raw)
    assert created["spec"]["serving"]["podTemplate"] == {"securityContext": {"runAsUser": 0}}


def test_turning_autoscaling_on_keeps_the_running_replica_count(control_plane, namespace, crds):
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    uid = created["metadata"]["uid"]
    kube = Kube(control_plane.api_client())
    for obj in _rendered(namespace, uid, {**SPEC, "serving": {"replicas": 3}}):
        kube.apply(obj)
    autoscaled = {**SPEC, "serving": {"replicas": 3, "autoscaling": {"maxReplicas": 5}}}
    assert kube.release_replicas(namespace, "scaled-vllm")
    for obj in _rendered(namespace, uid, autoscaled):
        kube.apply(obj)
    apps = kubernetes.client.AppsV1Api(control_plane.api_client())
    assert apps.read_namespaced_deployment("scaled-vllm", namespace).spec.replicas == 3
    assert not kube.release_replicas(namespace, "scaled-vllm")  # handed over once


def test_without_the_handover_dropping_replicas_would_reset_them_to_one(
    control_plane, namespace, crds
):
    """Why release_replicas exists: the API server's behaviour it works around."""
    created = ModelDeployments(control_plane, namespace).create("scaled", SPEC)
    uid = created["metadata"]["uid"]
    kube = Kube(control_plane.api_client())
    for obj in _rendered(namespace, uid, {**SPEC, "serving": {"replicas": 3}}):
        kube.apply(obj)
    autoscaled = {**SPEC, "serving": {"autoscaling": {"maxReplicas": 5}}}
    for obj in _rendered(namespace, uid, autoscaled):
        kube.apply(obj)
    apps = kubernetes.client.AppsV1Api(control_plane.api_client())
    assert apps.read_namespaced_deployment("scaled-vllm", namespace).spec.replicas == 1
