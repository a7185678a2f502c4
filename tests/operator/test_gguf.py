"""quantization.method gguf-*: the artifact is published for download and no vLLM runs on it."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from lorafuse.cli import main
from lorafuse.merger.engine.choices import GGUF_METHODS
from lorafuse.merger.gguf.methods import METHODS
from lorafuse.merger.pipeline.result import JobResult
from lorafuse.operator.children.desired import unwanted_children
from lorafuse.operator.lifecycle import JobObservation, Rollout, conditions, decide, phase_of
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.policy import Policy, violations
from lorafuse.operator.spec import (
    ArtifactStatus,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

PLAN = "a" * 16
OLD_PLAN = "b" * 16
PATH = "/models/artifacts/tiny--support-v3--gguf-q8_0--aaaaaaaaaaaa"


def _gguf(raw_spec, method: str = "gguf-q8_0", **serving) -> ModelDeploymentSpec:
    raw_spec["quantization"] = {"method": method}
    raw_spec["serving"] = {**raw_spec["serving"], **serving}
    return ModelDeploymentSpec.model_validate(raw_spec)


def _published(method: str = "gguf-q8_0") -> JobObservation:
    result = JobResult.model_validate({
        "ok": True, "step": "publish",
        "artifact": {"name": PATH.rsplit("/", 1)[1], "path": PATH, "digest": "sha256:1",
                     "bytes": 140000, "quantization": method},
        "validation": {"passed": True}, "model_shape": None,
    })
    return JobObservation("job", PLAN, "Succeeded", None, result)


def _gguf_artifact(plan: str) -> ArtifactStatus:
    return ArtifactStatus(name="tiny--gguf", path=PATH, digest="sha256:1",
                          quantization="gguf-q8_0", plan_hash=plan)


def test_the_gguf_exporter_writes_exactly_the_methods_the_crd_accepts():
    assert tuple(METHODS) == GGUF_METHODS


@pytest.mark.parametrize("method", GGUF_METHODS)
def test_every_gguf_method_reaches_the_plan_and_names_the_artifact(raw_spec, method):
    plan = plan_for(_gguf(raw_spec, method))
    assert plan.quantization.method == method
    assert f"--{method}--" in plan.artifact_name()


def test_gguf_with_adapter_serving_is_refused_in_one_line(raw_spec):
    with pytest.raises(ValidationError, match="gguf-q8_0 publishes a GGUF file for download"):
        _gguf(raw_spec, mode="adapter")


@pytest.mark.parametrize("method", ["gguf-q4_k_m", "gguf-q5_k_m"])
def test_k_quants_are_a_policy_violation_naming_what_is_missing(raw_spec, method):
    found = violations(_gguf(raw_spec, method), Policy())
    assert [v.field for v in found] == ["spec.quantization.method"]
    assert "llama-cpp-python" in found[0].message and "policy.ggufKQuants" in found[0].message


def test_an_installer_with_llama_cpp_in_its_image_may_allow_k_quants(raw_spec):
    assert violations(_gguf(raw_spec, "gguf-q4_k_m"), Policy(gguf_k_quants=True)) == []


def test_q8_0_needs_no_policy(raw_spec):
    assert violations(_gguf(raw_spec, "gguf-q8_0"), Policy()) == []


def test_a_published_gguf_is_not_served(raw_spec):
    decision = decide(_gguf(raw_spec), ModelDeploymentStatus(), PLAN, _published())
    assert decision.serve is None and not decision.create_job
    assert decision.artifact.quantization == "gguf-q8_0" and decision.artifact.digest == "sha256:1"


def test_a_published_gguf_is_phase_published(raw_spec):
    decision = decide(_gguf(raw_spec), ModelDeploymentStatus(), PLAN, _published())
    assert phase_of(decision, Rollout()) == "Published"


def test_a_published_gguf_is_ready_for_download_naming_the_file(raw_spec):
    decision = decide(_gguf(raw_spec), ModelDeploymentStatus(), PLAN, _published())
    ready, merged, _ = conditions(decision, Rollout(), 1, [])
    assert (ready.status, ready.reason) == ("True", "ForDownload")
    assert f"artifact for download: {PATH}/model.gguf on the model volume" in ready.message
    assert (merged.status, merged.reason) == ("True", "Published")


def test_a_gguf_plan_keeps_what_serves_now_while_it_merges(raw_spec):
    old = ModelDeploymentStatus(
        serving_mode="merged",
        artifact=ArtifactStatus(name="tiny--old", path="/models/artifacts/tiny--old",
                                quantization="none", plan_hash=OLD_PLAN),
    )
    decision = decide(_gguf(raw_spec), old, PLAN, JobObservation("job", PLAN, "Running", "merge"))
    assert decision.serve == "merged" and decision.artifact.plan_hash == OLD_PLAN


def test_a_failed_gguf_plan_does_not_fall_back_to_serving_adapters(raw_spec):
    result = JobResult(ok=False, step="merge", reason="Error", message="disk full")
    failed = JobObservation("job", PLAN, "Failed", "merge", result)
    decision = decide(_gguf(raw_spec), ModelDeploymentStatus(), PLAN, failed)
    assert decision.serve is None and decision.rollback is None
    assert phase_of(decision, Rollout()) == "Failed"


def test_a_failure_never_rolls_back_to_serving_a_gguf_artifact(spec):
    old = ModelDeploymentStatus(artifact=_gguf_artifact(OLD_PLAN))
    result = JobResult(ok=False, step="validate", reason="ValidationFailed", message="worse")
    failed = JobObservation("job", PLAN, "Failed", "validate", result)
    decision = decide(spec, old, PLAN, failed)
    assert decision.serve is None
    assert phase_of(decision, Rollout()) == "Failed"


def test_pinning_a_gguf_artifact_publishes_it_for_download(raw_spec):
    raw_spec["rollback"] = {"to": "tiny--gguf"}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    entry = HistoryEntry(name="tiny--gguf", path=PATH, plan_hash=OLD_PLAN,
                         quantization="gguf-q8_0")
    decision = decide(spec, ModelDeploymentStatus(history=[entry]), PLAN, None)
    assert decision.serve is None
    assert phase_of(decision, Rollout()) == "Published"


def test_nothing_to_serve_makes_every_optional_serving_child_unwanted(owner, raw_spec):
    raw_spec["serving"]["autoscaling"] = {"maxReplicas": 3}
    spec = ModelDeploymentSpec.model_validate(raw_spec)
    kinds = {kind for kind, _, _ in unwanted_children(owner, spec, serving=False)}
    assert kinds == {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"}


MANIFEST = """
apiVersion: lorafuse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: support-bot, namespace: llm}
spec:
  base: {source: /models/base}
  adapters: [{name: support-v3, source: /models/adapters/support-v3}]
  quantization: {method: gguf-q8_0}
  serving: {maxModelLen: 4096, maxNumSeqs: 8}
"""


def test_render_of_a_gguf_manifest_has_the_merge_job_and_no_deployment(tmp_path, capsys):
    path = tmp_path / "mdep.yaml"
    path.write_text(MANIFEST)
    assert main(["render", str(path)]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["PersistentVolumeClaim", "ConfigMap", "Job"]
