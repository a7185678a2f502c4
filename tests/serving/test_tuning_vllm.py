"""The tuner's KV accounting against vLLM on CPU: the KV size vLLM reports, within 2 %."""

import pytest

from lorafuse.serving.local import find_vllm_python
from tests.serving.vllm_cpu import (
    CPU_SHAPES,
    KV_BUDGET_GIB,
    build_models,
    run_vllm,
    tuner_prediction,
)

pytestmark = pytest.mark.vllm

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    python = find_vllm_python()
    if python is None:
        pytest.skip(
            "vLLM CPU venv absent: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON"
        )
    models = build_models(tmp_path_factory.mktemp("vllm-shapes"))
    # One process starts vLLM's engine once per shape (about 10 s each on 2 cores).
    return models, run_vllm(python, models)


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=[shape.name for shape in CPU_SHAPES])
def test_tuner_predicts_the_kv_cache_tokens_vllm_reports(vllm_run, shape):
    models, reports = vllm_run
    predicted = tuner_prediction(models[shape.name], shape, KV_BUDGET_GIB)
    reported = reports[shape.name]
    assert predicted.max_model_len == reported.max_model_len
    assert predicted.reported_tokens == pytest.approx(reported.kv_cache_tokens, rel=TOLERANCE)
    assert predicted.max_concurrency == pytest.approx(reported.max_concurrency, rel=TOLERANCE)
