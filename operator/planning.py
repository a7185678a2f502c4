"""ModelDeployment spec → MergePlan, the file the merge Job's steps read."""

from __future__ import annotations

from lorafuse.merger.plan import AdapterRef, MergePlan, Quantization, Validation
from lorafuse.operator import naming
from lorafuse.operator.spec import FileRef, ModelDeploymentSpec


def plan_for(spec: ModelDeploymentSpec) -> MergePlan:
    base = spec.base.source + (f"@{spec.base.revision}" if spec.base.revision else "")
    quant = spec.quantization
    check = spec.validation
    return MergePlan(
        base=base,
        adapters=[AdapterRef(name=a.name, source=a.source, weight=a.weight) for a in spec.adapters],
        combine=spec.combine.method,
        density=spec.combine.density,
        seed=spec.combine.seed,
        dtype=spec.dtype,
        quantization=Quantization(
            method=quant.method,
            calibration=input_path(quant.calibration, "calibration"),
            samples=quant.samples,
            seq_len=quant.seq_len,
        ),
        validation=Validation(
            eval=input_path(check.eval, "eval"),
            max_delta=check.max_delta,
            max_new_tokens=check.max_new_tokens,
        ),
        artifact_root=naming.ARTIFACT_ROOT,
    )


def input_path(ref: FileRef | None, kind: str) -> str | None:
    """Where the Job sees an eval or calibration file: a ConfigMap key is mounted under /inputs."""
    if ref is None:
        return None
    if ref.config_map is not None:
        return f"{naming.INPUTS_MOUNT}/{kind}/{ref.config_map.key}"
    return ref.path


def plan_hash(plan: MergePlan) -> str:
    return plan.content_hash()[:16]
