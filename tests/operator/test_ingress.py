"""The optional Ingress: host and path to the Service, class and TLS when given."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorafuse.operator.children.desired import unwanted_children
from lorafuse.operator.children.ingress import ingress
from lorafuse.operator.policy import Policy, violations
from lorafuse.operator.spec import ModelDeploymentSpec


def _spec(raw_spec, **wanted):
    raw_spec["serving"]["ingress"] = {"host": "llm.example.com", **wanted}
    return ModelDeploymentSpec.model_validate(raw_spec)


def test_no_ingress_is_rendered_unless_asked(owner, spec):
    assert ingress(owner, spec) is None


def test_the_ingress_routes_the_host_prefix_to_the_service_port(owner, raw_spec):
    rendered = ingress(owner, _spec(raw_spec, path="/v1"))
    assert rendered["apiVersion"] == "networking.k8s.io/v1"
    assert rendered["spec"]["rules"] == [
        {
            "host": "llm.example.com",
            "http": {
                "paths": [
                    {
                        "path": "/v1",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "support-bot", "port": {"number": 8000}}},
                    }
                ]
            },
        }
    ]
    assert "tls" not in rendered["spec"] and "ingressClassName" not in rendered["spec"]


def test_class_and_tls_secret_are_passed_on(owner, raw_spec):
    rendered = ingress(owner, _spec(raw_spec, className="nginx", tlsSecretName="llm-tls"))
    assert rendered["spec"]["ingressClassName"] == "nginx"
    assert rendered["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-tls"}]


def test_a_host_with_a_scheme_is_refused(raw_spec):
    with pytest.raises(ValidationError):
        _spec(raw_spec, host="https://llm.example.com")


def test_a_tls_secret_outside_the_allowed_secrets_is_a_policy_violation(raw_spec):
    spec = _spec(raw_spec, tlsSecretName="someone-elses-tls")
    fields = [v.field for v in violations(spec, Policy(allowed_secrets=("llm-*",)))]
    assert fields == ["spec.serving.ingress.tlsSecretName"]


def test_an_allowed_tls_secret_is_no_violation(raw_spec):
    spec = _spec(raw_spec, tlsSecretName="llm-tls")
    assert violations(spec, Policy(allowed_secrets=("llm-*",))) == []


def test_removing_the_ingress_deletes_it(owner, spec, raw_spec):
    assert ("Ingress", "networking.k8s.io/v1", "support-bot") in unwanted_children(owner, spec)
    kinds = [kind for kind, _, _ in unwanted_children(owner, _spec(raw_spec))]
    assert "Ingress" not in kinds
