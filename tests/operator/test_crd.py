"""The generated CRD: structural (what Kubernetes 1.20 accepts) and as strict as the models."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from lorafuse.cli import main
from lorafuse.operator.crd import model_deployment_crd

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def _schema() -> dict[str, Any]:
    return model_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _validate(resource: dict[str, Any]) -> None:
    # Draft 4 reads minimum/exclusiveMinimum the way OpenAPI v3.0 (and Kubernetes) does.
    jsonschema.Draft4Validator(_schema()).validate(resource)


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "lorafuse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "x"},
        "spec": spec,
    }


def test_every_node_has_a_type_except_int_or_string_and_opaque_ones():
    for path, node in _nodes(_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


def test_the_schema_has_no_refs_nulls_or_titles():
    text = yaml.safe_dump(_schema())
    assert "$ref" not in text and "null" not in text and "title:" not in text


def test_unknown_fields_are_kept_only_where_kubernetes_defines_the_content():
    opaque = {path for path, node in _nodes(_schema()) if node.get(PRESERVE)}
    assert opaque == {
        ".spec.serving.env[]",
        ".spec.serving.resources",
        ".spec.serving.tolerations[]",
        ".spec.serving.podTemplate.affinity",
        ".spec.serving.podTemplate.topologySpreadConstraints[]",
        ".spec.job.resources",
        ".spec.job.env[]",
        ".spec.job.tolerations[]",
        ".spec.job.podTemplate.affinity",
        ".spec.job.podTemplate.topologySpreadConstraints[]",
        # kept so that a field the operator owns is refused with a condition, not pruned
        ".spec.serving.podTemplate",
        ".spec.job.podTemplate",
        ".status.provenance",
        ".status.modelShape",
    }


def test_enums_ranges_and_defaults_reach_the_schema():
    serving = _schema()["properties"]["spec"]["properties"]["serving"]["properties"]
    assert serving["mode"]["enum"] == ["merged", "adapter"]
    assert serving["mode"]["default"] == "merged"
    assert serving["gpuMemoryUtilization"]["maximum"] == 1
    assert serving["gpuMemoryUtilization"]["exclusiveMinimum"] is True
    assert serving["maxModelLen"]["x-kubernetes-int-or-string"] is True


def test_a_full_example_is_valid(raw_spec):
    raw_spec["quantization"] = {
        "method": "gptq",
        "calibration": {"configMap": {"name": "c", "key": "c.jsonl"}},
    }
    raw_spec["serving"] |= {
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "resources": {"limits": {"memory": "64Gi"}},
        "maxModelLen": "auto",
    }
    _validate(_resource(raw_spec))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("serving", "maxModelLen", "huge"),
        ("serving", "maxModelLen", 8),
        ("serving", "mode", "both"),
        ("serving", "gpuMemoryUtilization", 0),
        ("serving", "replicas", -1),
        ("quantization", "method", "int3"),
        ("storage", "size", "lots"),
    ],
)
def test_bad_values_fail_the_schema(raw_spec, section, key, value):
    raw_spec.setdefault(section, {})[key] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(_resource(raw_spec))


def test_an_eval_file_must_name_exactly_one_place(raw_spec):
    both = copy.deepcopy(raw_spec)
    both["validation"] = {"eval": {"configMap": {"name": "e", "key": "k"}, "path": "/models/e"}}
    with pytest.raises(jsonschema.ValidationError):
        _validate(_resource(both))


def test_printer_columns_are_phase_mode_quant_ready_age():
    columns = model_deployment_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Mode", "Quant", "Ready", "Age"]


def test_crd_command_prints_the_crd_and_peering_crds(capsys):
    assert main(["crd"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [
        "modeldeployments.lorafuse.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ]
    assert docs[0] == model_deployment_crd()


@pytest.mark.parametrize(
    "section",
    [
        ".spec.serving.autoscaling",
        ".spec.serving.disruptionBudget",
        ".spec.serving.ingress",
        ".spec.serving.podTemplate",
        ".spec.job.podTemplate",
        ".spec.serving.runtimeAdapters",
        ".status.serving.pods",
    ],
)
def test_kubectl_explain_describes_every_scaling_exposure_and_placement_field(section):
    fields = [(p, n) for p, n in _nodes(_schema()) if p.startswith(section) and "{}" not in p]
    assert fields
    assert [p for p, n in fields if not n.get("description") and not p.endswith("[]")] == []
