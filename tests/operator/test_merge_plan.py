"""The one translation of a ModelDeployment's spec into the MergePlan its Job runs."""

from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.spec import ModelDeploymentSpec


def test_spec_fields_become_the_plan():
    spec = {
        "base": {"source": "hf://acme/llama", "revision": "abc123"},
        "adapters": [{"name": "support", "source": "pvc://adapters/support", "weight": 0.5}],
        "combine": {"method": "ties", "density": 0.4, "seed": 3},
        "dtype": "bfloat16",
        "quantization": {"method": "gptq", "calibration": {"configMap": {"name": "c",
                                                                         "key": "cal.jsonl"}},
                         "samples": 16, "seqLen": 256, "ignore": ["re:.*layers\\.0\\."]},
        "validation": {"eval": {"path": "/models/eval.jsonl"}, "maxDelta": 0.05,
                       "maxNewTokens": 20, "minTokenAgreement": 0.7},
        "serving": {"mode": "merged"},
    }
    plan = plan_for(ModelDeploymentSpec.model_validate(spec))
    assert plan.base == "hf://acme/llama@abc123"
    assert (plan.combine, plan.density, plan.seed, plan.dtype) == ("ties", 0.4, 3, "bfloat16")
    assert plan.adapters[0].weight == 0.5
    assert plan.quantization.calibration == "/inputs/calibration/cal.jsonl"
    assert (plan.quantization.samples, plan.quantization.seq_len) == (16, 256)
    assert plan.quantization.ignore == ["re:.*layers\\.0\\."]
    assert plan.validation.eval == "/models/eval.jsonl"
    assert (plan.validation.max_delta, plan.validation.min_token_agreement) == (0.05, 0.7)
    assert plan.artifact_root == "/models/artifacts"
