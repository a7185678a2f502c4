"""Applying a TensorPlan to one base tensor: float32 math, one rounding, finiteness check."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorafuse.errors import UserError
from lorafuse.merger.combine import combine_task_vectors
from lorafuse.merger.lora import add_bias, add_low_rank, apply_dora, delta
from lorafuse.merger.plan_tensors import TensorPlan
from lorafuse.merger.shards import DTYPES

# Rows per block in the blocked CPU path: about 1 MiB of float32 per block stays in cache
# while it is widened, updated and rounded.
BLOCK_BYTES = 1 << 20


@dataclass
class CombineSettings:
    method: str = "linear"
    density: float | None = None
    seed: int = 0


@dataclass
class Workspace:
    """Buffers reused from tensor to tensor: fresh large allocations cost page faults."""

    device: torch.device
    _buffers: dict[tuple[torch.dtype, str], torch.Tensor] = field(default_factory=dict)
    read_buffer: bytearray = field(default_factory=bytearray)

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, role: str,
               device: torch.device | None = None) -> torch.Tensor:
        device = device or self.device
        numel = 1
        for dim in shape:
            numel *= dim
        key = (dtype, f"{role}:{device}")
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel].view(shape)

    def bytes_for(self, nbytes: int) -> bytearray:
        if len(self.read_buffer) < nbytes:
            self.read_buffer = bytearray(nbytes)
        return self.read_buffer


def merge_tensor(plan: TensorPlan, base: torch.Tensor, settings: CombineSettings,
                 workspace: Workspace) -> torch.Tensor:
    """The merged tensor in the plan's output dtype (a view into a workspace buffer)."""
    out_dtype = DTYPES[plan.dtype]
    if _blockable(plan, settings, workspace):
        return _merge_blocked(plan, base, workspace, out_dtype)
    work = workspace.tensor(plan.shape, torch.float32, "work")
    work.copy_(plan.replacement if plan.replacement is not None else base)
    for rows in plan.token_rows:
        index = torch.tensor(rows.indices, dtype=torch.long, device=work.device)
        work.index_copy_(0, index, rows.values.to(device=work.device, dtype=torch.float32))
    if plan.dora is not None:
        apply_dora(work, plan.dora)
    _add_updates(work, plan, settings)
    _check_finite(work, plan, "")
    out = workspace.tensor(plan.shape, out_dtype, "out", torch.device("cpu"))
    out.copy_(work)
    if out_dtype != torch.float32:
        _check_finite(out, plan, f" after rounding to {plan.dtype}")
    return out


def _add_updates(work: torch.Tensor, plan: TensorPlan, settings: CombineSettings) -> None:
    low_rank, bias = plan.low_rank, plan.bias
    if settings.method == "linear" or len(low_rank) + len(bias) == 0:
        for contribution in low_rank:
            add_low_rank(work, contribution)
        for contribution in bias:
            add_bias(work, contribution)
        return
    contributions = low_rank or bias
    vectors = [
        delta(c, work.device) if low_rank
        else c.part.bias.to(device=work.device, dtype=torch.float32) * c.part.scaling
        for c in contributions
    ]
    weights = [c.weight for c in contributions]
    work.add_(combine_task_vectors(settings.method, vectors, weights, settings.density,
                                   settings.seed, plan.name))


def _blockable(plan: TensorPlan, settings: CombineSettings, workspace: Workspace) -> bool:
    return (workspace.device.type == "cpu" and settings.method == "linear" and len(plan.shape) == 2
            and plan.replacement is None and not plan.token_rows and plan.dora is None
            and not plan.bias)


def _merge_blocked(plan: TensorPlan, base: torch.Tensor, workspace: Workspace,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """W + sum(w_i s_i B_i A_i) a block of rows at a time: widen, add, check, round."""
    rows, cols = plan.shape
    step = max(1, BLOCK_BYTES // (4 * max(cols, 1)))
    out = workspace.tensor(plan.shape, out_dtype, "out")
    block = workspace.tensor((min(step, rows), cols), torch.float32, "block")
    factors = [(*c.factors(block.device), c.alpha) for c in plan.low_rank]
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        work = block[: stop - start]
        work.copy_(base[start:stop])
        for left, right, alpha in factors:
            work.addmm_(left[start:stop], right, alpha=alpha)
        _check_finite(work, plan, "")
        out[start:stop].copy_(work)
    if out_dtype != torch.float32:
        _check_finite(out, plan, f" after rounding to {plan.dtype}")
    return out


def _check_finite(tensor: torch.Tensor, plan: TensorPlan, when: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        adapters = ", ".join(plan.adapters()) or "no adapter"
        raise UserError(f"{plan.name}: merged values are not finite (NaN or Inf){when}; "
                        f"check adapter(s) {adapters}")
