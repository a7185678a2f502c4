"""spec.serving.podTemplate and spec.job.podTemplate: merged over the rendered pods, and
refused where they reach for what the operator owns."""

from __future__ import annotations

from lorafuse.operator.children.common import Images
from lorafuse.operator.children.deployment import serving_deployment
from lorafuse.operator.children.job import merge_job
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.policy import Policy, violations
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec

MERGED = ServingTarget("merged", Sizing(2048, 16, "set"), "/models/artifacts/a--1", "sha256:ab")
ZONE_SPREAD = {
    "maxSkew": 1,
    "topologyKey": "topology.kubernetes.io/zone",
    "whenUnsatisfiable": "ScheduleAnyway",
    "labelSelector": {"matchLabels": {"lorafuse.dev/deployment": "support-bot"}},
}
TEMPLATE = {
    "labels": {"team": "search"},
    "annotations": {"cost-center": "42"},
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "topologySpreadConstraints": [ZONE_SPREAD],
    "priorityClassName": "llm-serving",
    "imagePullSecrets": [{"name": "registry-pull"}],
    "serviceAccountName": "vllm",
    "runtimeClassName": "nvidia",
}
POLICY = Policy(allowed_secrets=("registry-*",))


def _spec(raw_spec, section="serving", **template):
    raw_spec.setdefault(section, {})["podTemplate"] = template
    return ModelDeploymentSpec.model_validate(raw_spec)


def _serving_template(owner, spec):
    return serving_deployment(owner, spec, MERGED, Images())["spec"]["template"]


def _job_template(owner, spec):
    plan = plan_for(spec)
    return merge_job(owner, spec, plan, plan_hash(plan), Images())["spec"]["template"]


def _fields(spec):
    return [v.field for v in violations(spec, POLICY)]


def test_scheduling_and_identity_fields_reach_the_serving_pods(owner, raw_spec):
    pod = _serving_template(owner, _spec(raw_spec, **TEMPLATE))["spec"]
    assert pod["affinity"] == TEMPLATE["affinity"]
    assert pod["topologySpreadConstraints"] == [ZONE_SPREAD]
    assert pod["priorityClassName"] == "llm-serving"
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert pod["serviceAccountName"] == "vllm"
    assert pod["runtimeClassName"] == "nvidia"


def test_extra_labels_and_annotations_join_the_operators(owner, raw_spec):
    meta = _serving_template(owner, _spec(raw_spec, **TEMPLATE))["metadata"]
    assert meta["labels"]["team"] == "search"
    assert meta["labels"]["lorafuse.dev/component"] == "serving"
    assert meta["annotations"]["cost-center"] == "42"
    assert meta["annotations"]["lorafuse.dev/artifact-digest"] == "sha256:ab"


def test_the_job_pod_gets_its_own_template(owner, raw_spec):
    template = _job_template(owner, _spec(raw_spec, "job", priorityClassName="batch-low"))
    assert template["spec"]["priorityClassName"] == "batch-low"
    assert "priorityClassName" not in _serving_template(owner, _spec(raw_spec, "job"))["spec"]


def test_an_empty_template_changes_nothing(owner, spec):
    pod = _serving_template(owner, spec)["spec"]
    assert not {"affinity", "priorityClassName", "serviceAccountName"} & set(pod)


def test_the_operators_pod_fields_are_kept(owner, raw_spec):
    pod = _serving_template(owner, _spec(raw_spec, **TEMPLATE))["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["command"][:3] == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]


def test_a_template_with_the_operators_fields_is_a_policy_violation(raw_spec):
    spec = _spec(raw_spec, securityContext={"runAsUser": 0}, containers=[{"name": "x"}])
    assert _fields(spec) == [
        "spec.serving.podTemplate.securityContext",
        "spec.serving.podTemplate.containers",
    ]


def test_a_violation_says_the_field_is_the_operators(raw_spec):
    spec = _spec(raw_spec, "job", volumes=[])
    [violation] = violations(spec, POLICY)
    assert str(violation).startswith("spec.job.podTemplate.volumes: is the operator's")


def test_an_unknown_template_field_is_a_policy_violation(raw_spec):
    assert _fields(_spec(raw_spec, hostNetwork=True)) == ["spec.serving.podTemplate.hostNetwork"]


def test_labels_the_operator_selects_on_are_refused(raw_spec):
    spec = _spec(
        raw_spec, labels={"lorafuse.dev/deployment": "other", "app.kubernetes.io/name": "x"}
    )
    assert _fields(spec) == [
        "spec.serving.podTemplate.labels[lorafuse.dev/deployment]",
        "spec.serving.podTemplate.labels[app.kubernetes.io/name]",
    ]


def test_annotations_of_the_operator_are_refused(raw_spec):
    spec = _spec(raw_spec, annotations={"lorafuse.dev/artifact-digest": "sha256:00"})
    assert _fields(spec) == ["spec.serving.podTemplate.annotations[lorafuse.dev/artifact-digest]"]


def test_pull_secrets_must_be_allowed_secrets(raw_spec):
    spec = _spec(raw_spec, imagePullSecrets=[{"name": "registry-ok"}, {"name": "prod-db"}])
    assert _fields(spec) == ["spec.serving.podTemplate.imagePullSecrets[1]"]
