"""Tensor-by-tensor comparison of two merged checkpoints, one tensor in memory at a time."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open


def tensor_files(checkpoint: Path) -> dict[str, Path]:
    """Map every tensor name of a safetensors checkpoint (sharded or not) to its file."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: checkpoint / file for name, file in weight_map.items()}
    single = checkpoint / "model.safetensors"
    with safe_open(single, framework="pt") as handle:
        return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)


def bf16_ulp(values: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at each value's magnitude (8 significant bits)."""
    _mantissa, exponent = torch.frexp(values.float())
    return torch.ldexp(torch.ones_like(values, dtype=torch.float32), exponent - 8)


@dataclass
class Comparison:
    tensors: int = 0
    elements: int = 0
    equal_elements: int = 0
    max_abs_diff: float = 0.0
    max_diff_ulps: float = 0.0  # in ulps of the larger magnitude of the two values
    beyond_tolerance: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # shape/dtype, or unmerged not bitwise

    @property
    def equal_within_rounding(self) -> bool:
        return not (self.missing or self.mismatched or self.beyond_tolerance)

    def summary(self) -> str:
        share = self.equal_elements / max(self.elements, 1)
        verdict = "EQUAL within bf16 rounding" if self.equal_within_rounding else "DIFFERENT"
        return (
            f"{verdict}: {self.tensors} tensors, {self.elements:,} elements, "
            f"{share:.4%} bitwise equal, max |diff| {self.max_abs_diff:.3g} "
            f"({self.max_diff_ulps:.2f} ulp), {self.beyond_tolerance} beyond tolerance, "
            f"missing {self.missing[:3]}, mismatched {self.mismatched[:3]}"
        )


def compare_checkpoints(candidate: Path, reference: Path, base: Path) -> Comparison:
    """Compare `candidate` with `reference`, both merges of `base`.

    Tolerance per element: one bf16 ulp of the result plus one of the delta (W' - W).
    A merge rounded once (fp32 then bf16) and one that rounds the delta to bf16 before
    adding it (PEFT on a bf16 model) can differ by that much and no more. Tensors the
    adapter does not touch must be bitwise equal.
    """
    cand_files, ref_files, base_files = (tensor_files(p) for p in (candidate, reference, base))
    result = Comparison(missing=sorted(set(ref_files) ^ set(cand_files)))
    with ExitStack() as stack:
        handles: dict[Path, object] = {}

        def load(path: Path, name: str) -> torch.Tensor:
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            return handles[path].get_tensor(name)

        for name in sorted(set(ref_files) & set(cand_files)):
            _compare_tensor(
                name,
                load(cand_files[name], name),
                load(ref_files[name], name),
                load(base_files[name], name) if name in base_files else None,
                result,
            )
    return result


def _compare_tensor(name, cand, ref, base, result: Comparison) -> None:
    result.tensors += 1
    result.elements += ref.numel()
    if cand.shape != ref.shape or cand.dtype != ref.dtype:
        result.mismatched.append(
            f"{name}: {cand.dtype}{list(cand.shape)} vs {ref.dtype}{list(ref.shape)}"
        )
        return
    equal = cand == ref
    result.equal_elements += int(equal.sum())
    if bool(equal.all()):
        return
    if base is None or bool(torch.equal(base, ref)):
        result.mismatched.append(f"{name}: not merged, yet not bitwise equal")
        return
    cand32, ref32 = cand.float(), ref.float()
    diff = (cand32 - ref32).abs()
    larger = torch.maximum(cand32.abs(), ref32.abs())
    tolerance = bf16_ulp(larger) + bf16_ulp((ref32 - base.float()).abs())
    result.beyond_tolerance += int((diff > tolerance).sum())
    result.max_abs_diff = max(result.max_abs_diff, float(diff.max()))
    result.max_diff_ulps = max(result.max_diff_ulps, float((diff / bf16_ulp(larger)).max()))
