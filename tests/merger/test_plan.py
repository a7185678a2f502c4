"""MergePlan: validation of sources and names, and content-addressed artifact naming."""

import pytest
from pydantic import ValidationError

from lorafuse.merger.pipeline.plan import MergePlan


def make_plan(**overrides) -> MergePlan:
    fields = dict(
        base="hf://meta-llama/Llama-3-8B@8cde5ca8abcdef",
        adapters=[{"name": "support-v3", "source": "pvc://adapters/support-v3"}],
    )
    fields.update(overrides)
    return MergePlan.model_validate(fields)


def test_artifact_name_has_readable_parts_and_hash():
    name = make_plan(quantization={"method": "awq"}).artifact_name()
    base, adapter, quant, digest = name.split("--")
    assert base == "llama-3-8b@8cde5ca"
    assert adapter == "support-v3"
    assert quant == "awq"
    assert len(digest) == 12


def test_same_plan_gives_same_artifact_name():
    assert make_plan().artifact_name() == make_plan().artifact_name()


def test_artifact_root_does_not_change_the_name():
    assert make_plan(artifact_root="/a").artifact_name() == make_plan().artifact_name()


@pytest.mark.parametrize(
    "change",
    [
        {"combine": "ties", "density": 0.5},
        {"dtype": "float16"},
        {"seed": 7},
        {"quantization": {"method": "fp8", "ignore": [r"re:model\.layers\.0\."]}},
        {"adapters": [{"name": "support-v3", "source": "pvc://adapters/support-v4"}]},
        {
            "adapters": [
                {"name": "support-v3", "source": "pvc://adapters/support-v3", "weight": 0.5}
            ]
        },
    ],
)
def test_any_content_change_gives_a_new_artifact_name(change):
    assert make_plan(**change).artifact_name() != make_plan().artifact_name()


def test_layers_kept_unquantized_need_an_llm_compressor_method():
    with pytest.raises(ValidationError, match="applies to awq, gptq and fp8, not to gguf-q8_0"):
        make_plan(quantization={"method": "gguf-q8_0", "ignore": ["lm_head"]})


def test_an_ignore_pattern_must_be_a_valid_regex():
    with pytest.raises(ValidationError, match="not a regular expression"):
        make_plan(quantization={"method": "fp8", "ignore": ["re:layers.(0"]})


def test_relative_source_is_rejected():
    with pytest.raises(ValidationError, match="base"):
        make_plan(base="models/llama")


def test_duplicate_adapter_names_are_rejected():
    adapter = {"name": "a", "source": "/adapters/a"}
    with pytest.raises(ValidationError, match="unique"):
        make_plan(adapters=[adapter, adapter])


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="colour"):
        make_plan(colour="blue")
