"""The merge Job's steps in order, and the ones a plan needs (Job containers, `lorafuse run`)."""

from __future__ import annotations

from lorafuse.merger.pipeline.plan import MergePlan

STEPS = ("fetch", "merge", "quantize", "validate", "publish")


def steps_for(plan: MergePlan) -> list[str]:
    """Every step but quantize when the plan asks for no quantization."""
    return [step for step in STEPS if step != "quantize" or plan.quantization.method != "none"]
