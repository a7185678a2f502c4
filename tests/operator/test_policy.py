"""The admin policy: what a ModelDeployment may use is the installer's choice, not its author's."""

from __future__ import annotations

import pytest

from lorafuse.operator import naming
from lorafuse.operator.policy import Policy, violations
from lorafuse.operator.spec import ModelDeploymentSpec

POLICY = Policy(allowed_secrets=("hub-*",))


def _spec(raw_spec, **sections) -> ModelDeploymentSpec:
    for section, values in sections.items():
        raw_spec[section] = {**raw_spec.get(section, {}), **values}
    return ModelDeploymentSpec.model_validate(raw_spec)


def _fields(spec: ModelDeploymentSpec, policy: Policy = POLICY) -> list[str]:
    return [v.field for v in violations(spec, policy)]


def test_the_default_images_are_allowed(spec):
    assert violations(spec, POLICY) == []


def test_a_serving_image_outside_the_patterns_is_refused(raw_spec):
    spec = _spec(raw_spec, serving={"image": "evil.example/miner:1"})
    assert _fields(spec) == ["spec.serving.image"]


def test_a_job_image_outside_the_patterns_is_refused(raw_spec):
    spec = _spec(raw_spec, job={"image": "evil.example/miner:1"})
    assert _fields(spec) == ["spec.job.image"]


def test_image_patterns_match_with_wildcards(raw_spec):
    spec = _spec(raw_spec, serving={"image": "registry.corp/vllm:0.12"})
    policy = Policy(allowed_images=(naming.DEFAULT_MERGER_IMAGE, "registry.corp/*"))
    assert _fields(spec, policy) == []


def test_an_env_secret_outside_the_allowed_secrets_is_refused(raw_spec):
    env = [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db-admin", "key": "pw"}}}]
    spec = _spec(raw_spec, job={"env": env})
    assert _fields(spec) == ["spec.job.env[0].valueFrom.secretKeyRef"]


def test_an_allowed_secret_may_be_used(raw_spec):
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hub-team-a", "key": "t"}}}]
    assert _fields(_spec(raw_spec, serving={"env": env})) == []


def test_no_secret_is_allowed_by_default(raw_spec):
    raw_spec["credentials"] = {"secretName": "hub-team-a"}
    assert _fields(ModelDeploymentSpec.model_validate(raw_spec), Policy()) == [
        "spec.credentials.secretName"
    ]


@pytest.mark.parametrize(
    "arg",
    [
        "--model",
        "--model=/models/evil",
        "--trust-remote-code",
        "--trust-remote",
        "--lora-modules",
        "--served-model-name=x",
        "--port",
        "--host",
        "--download-dir",
        "--tokenizer",
        "--trust_remote_code",
    ],
)
def test_operator_owned_vllm_args_are_refused_in_extra_args(raw_spec, arg):
    spec = _spec(raw_spec, serving={"extraArgs": ["--enforce-eager", arg]})
    assert _fields(spec) == ["spec.serving.extraArgs[1]"]


def test_tuning_args_are_allowed_in_extra_args(raw_spec):
    args = ["--enforce-eager", "--max-num-batched-tokens=8192", "--lora-dtype", "auto"]
    assert _fields(_spec(raw_spec, serving={"extraArgs": args})) == []


def test_the_installer_can_forbid_more_vllm_args(raw_spec):
    spec = _spec(raw_spec, serving={"extraArgs": ["--enforce-eager"]})
    policy = Policy(forbidden_vllm_args=("--enforce-eager",))
    assert _fields(spec, policy) == ["spec.serving.extraArgs[0]"]


def test_a_violation_names_the_field_and_why(raw_spec):
    spec = _spec(raw_spec, serving={"image": "evil.example/miner:1"})
    (violation,) = violations(spec, POLICY)
    assert str(violation).startswith("spec.serving.image: image 'evil.example/miner:1'")


def test_only_the_default_service_account_is_allowed_by_default(raw_spec):
    raw_spec["serving"]["podTemplate"] = {"serviceAccountName": "default"}
    raw_spec["job"] = {"podTemplate": {"serviceAccountName": "ci-deployer"}}
    assert _fields(ModelDeploymentSpec.model_validate(raw_spec), Policy()) == [
        "spec.job.podTemplate.serviceAccountName"
    ]


def test_a_service_account_outside_the_patterns_is_refused_naming_it(raw_spec):
    raw_spec["serving"]["podTemplate"] = {"serviceAccountName": "namespace-admin"}
    policy = Policy(allowed_service_accounts=("llm-*",))
    (violation,) = violations(ModelDeploymentSpec.model_validate(raw_spec), policy)
    assert violation.field == "spec.serving.podTemplate.serviceAccountName"
    assert "'namespace-admin' is not in the operator's allowed ServiceAccounts" in str(violation)


def test_service_accounts_matching_the_patterns_may_be_used(raw_spec):
    raw_spec["serving"]["podTemplate"] = {"serviceAccountName": "llm-serving"}
    raw_spec["job"] = {"podTemplate": {"serviceAccountName": "llm-merge"}}
    policy = Policy(allowed_service_accounts=("llm-*",))
    assert _fields(ModelDeploymentSpec.model_validate(raw_spec), policy) == []


def test_an_unset_service_account_is_always_allowed(spec):
    assert _fields(spec, Policy(allowed_service_accounts=())) == []
