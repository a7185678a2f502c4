"""The ModelDeployment spec model: defaults, and the inputs it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.spec import ModelDeploymentSpec


def test_defaults_fill_a_minimal_spec(spec):
    assert spec.serving.mode == "merged"
    assert spec.rollback.on_failure is True
    assert spec.quantization.method == "none"
    assert spec.serving.gpu.resource_name == "nvidia.com/gpu"
    assert spec.storage.existing_claim is None


def test_auto_is_the_default_for_max_model_len_and_max_num_seqs():
    spec = ModelDeploymentSpec.model_validate(
        {"base": {"source": "/models/base"}, "adapters": [{"name": "a", "source": "/models/a"}]}
    )
    assert (spec.serving.max_model_len, spec.serving.max_num_seqs) == ("auto", "auto")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("serving", "maxModelLen"), "huge"),
        (("serving", "maxModelLen"), 8),
        (("serving", "mode"), "both"),
        (("serving", "gpuMemoryUtilization"), 1.5),
        (("quantization", "method"), "int3"),
        (("base", "source"), "s3://bucket/model"),
        (("combine", "method"), "average"),
    ],
)
def test_out_of_range_values_are_rejected(raw_spec, path, value):
    section, key = path
    raw_spec.setdefault(section, {})[key] = value
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_duplicate_adapter_names_are_rejected(raw_spec):
    raw_spec["adapters"].append({"name": "support-v3", "source": "/models/other"})
    with pytest.raises(ValidationError, match="unique"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_ties_needs_a_density(raw_spec):
    raw_spec["combine"] = {"method": "ties"}
    with pytest.raises(ValidationError, match="density"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_awq_needs_calibration_data(raw_spec):
    raw_spec["quantization"] = {"method": "awq"}
    with pytest.raises(ValidationError, match="calibration"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_layers_kept_unquantized_are_refused_without_a_quantization(raw_spec):
    raw_spec["quantization"] = {"ignore": ["lm_head"]}
    with pytest.raises(ValidationError, match="quantization.ignore applies to awq, gptq and fp8"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_a_file_reference_takes_exactly_one_of_config_map_and_path(raw_spec):
    raw_spec["validation"] = {
        "eval": {"configMap": {"name": "evals", "key": "eval.jsonl"}, "path": "/models/e.jsonl"}
    }
    with pytest.raises(ValidationError, match="exactly one"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_revision_is_refused_for_a_local_base(raw_spec):
    raw_spec["base"] = {"source": "/models/base", "revision": "abc"}
    with pytest.raises(ValidationError, match="hf://"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_unknown_fields_are_rejected(raw_spec):
    raw_spec["serving"]["maxModelLength"] = 4096
    with pytest.raises(ValidationError, match="maxModelLength"):
        ModelDeploymentSpec.model_validate(raw_spec)


def test_rollback_to_accepts_the_name_of_an_artifact_made_from_a_hub_revision(raw_spec):
    raw_spec["base"] = {"source": "hf://acme/tiny-llama", "revision": "v1.2"}
    name = plan_for(ModelDeploymentSpec.model_validate(raw_spec)).artifact_name()
    assert "@" in name
    raw_spec["rollback"] = {"to": name}
    assert ModelDeploymentSpec.model_validate(raw_spec).rollback.to == name
