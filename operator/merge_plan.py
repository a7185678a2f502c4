"""ModelDeploymentSpec -> MergePlan: the one translation, for the operator, render and run.

It lives on the operator side because its input is the operator's typed spec: the arrows
point operator -> merger's plan types, and merger never imports operator code. Where the
Job finds things is a parameter (JobPaths), so `lorafuse run` gets the same plan with its
local directory standing in for the Job pod's volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafuse.merger.pipeline.plan import MergePlan
from lorafuse.operator import naming
from lorafuse.operator.spec import FileRef, ModelDeploymentSpec


@dataclass(frozen=True)
class JobPaths:
    """Where the merge Job sees sources and input files: in the Job pod, as the operator
    mounts them (a ConfigMap key at /inputs/KIND/KEY, a path as written)."""

    artifact_root: str = naming.ARTIFACT_ROOT

    def source(self, source: str) -> str:
        return source

    def input_file(self, kind: str, ref: FileRef) -> str:
        """`kind` is "eval" or "calibration"."""
        if ref.config_map is not None:
            return f"{naming.INPUTS_MOUNT}/{kind}/{ref.config_map.key}"
        assert ref.path is not None  # FileRef holds exactly one of them
        return ref.path


IN_JOB_POD = JobPaths()


def plan_for(spec: ModelDeploymentSpec, paths: JobPaths = IN_JOB_POD) -> MergePlan:
    """The MergePlan for a spec (its serving, storage and job fields do not change it)."""
    quant, check = spec.quantization, spec.validation
    base = spec.base.source
    if spec.base.revision:
        base = f"{base}@{spec.base.revision}"
    calibration = quant.calibration and paths.input_file("calibration", quant.calibration)
    return MergePlan(
        base=paths.source(base),
        adapters=[
            {"name": a.name, "source": paths.source(a.source), "weight": a.weight}
            for a in spec.adapters
        ],
        combine=spec.combine.method,
        density=spec.combine.density,
        seed=spec.combine.seed,
        dtype=spec.dtype,
        quantization={
            "method": quant.method,
            "calibration": calibration,
            "samples": quant.samples,
            "seq_len": quant.seq_len,
            "ignore": quant.ignore,
        },
        validation={
            "eval": check.eval and paths.input_file("eval", check.eval),
            "max_delta": check.max_delta,
            "max_new_tokens": check.max_new_tokens,
            "min_token_agreement": check.min_token_agreement,
            "max_mean_kl": check.max_mean_kl,
        },
        artifact_root=paths.artifact_root,
    )


def plan_hash(plan: MergePlan) -> str:
    """The short content hash in the names and labels of a plan's Job and ConfigMap."""
    return plan.content_hash()[:16]
