"""Applying a TensorPlan to one base tensor: float32 math, one rounding, finiteness check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lorafuse.errors import UserError
from lorafuse.merger.background import OrderedIO, RowPool
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
    """Buffers reused from tensor to tensor (fresh large allocations cost page faults), the
    I/O thread that writes them, and the threads that compute row blocks."""

    device: torch.device
    io: OrderedIO
    pool: RowPool
    _buffers: dict[tuple[torch.dtype, str], torch.Tensor] = field(default_factory=dict)
    _read_buffer: bytearray = field(default_factory=bytearray)
    _out_turn: int = 0

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, role: str,
               device: torch.device | None = None) -> torch.Tensor:
        return self._buffer(shape, dtype, role, device or self.device)[0]

    def _buffer(self, shape, dtype, role, device) -> tuple[torch.Tensor, torch.Tensor]:
        numel = 1
        for dim in shape:
            numel *= dim
        key = (dtype, f"{role}:{device}")
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel].view(shape), buffer

    def out_tensor(self, shape: tuple[int, ...], dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A CPU output buffer and its fence; two alternate, so one is written out while the
        next tensor is computed into the other."""
        self._out_turn += 1
        view, buffer = self._buffer(shape, dtype, f"out{self._out_turn % 2}",
                                    torch.device("cpu"))
        self.io.wait(buffer)
        return view, buffer

    def read_buffer(self, nbytes: int) -> bytearray:
        if len(self._read_buffer) < nbytes:
            self._read_buffer = bytearray(nbytes)
        return self._read_buffer


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


def merge_tensor(plan: TensorPlan, base: torch.Tensor, settings: CombineSettings,
                 workspace: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged tensor in the plan's output dtype and the buffer holding it (its fence)."""
    out_dtype = DTYPES[plan.dtype]
    if _blockable(plan, settings, workspace):
        return _merge_blocked(plan, base, workspace, out_dtype)
    with torch_threads(workspace.pool.workers):
        work = workspace.tensor(plan.shape, torch.float32, "work")
        work.copy_(plan.replacement.load() if plan.replacement is not None else base)
        for rows in plan.token_rows:
            index = torch.tensor(rows.indices, dtype=torch.long, device=work.device)
            work.index_copy_(0, index, rows.values.to(device=work.device, dtype=torch.float32))
        if plan.dora is not None:
            apply_dora(work, plan.dora)
        _add_updates(work, plan, settings)
        _check_finite(work, plan, "")
        out, fence = workspace.out_tensor(plan.shape, out_dtype)
        out.copy_(work)
        if out_dtype != torch.float32:
            _check_finite(out, plan, f" after rounding to {plan.dtype}")
    return out, fence


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
    """Plain linear LoRA on a CPU: the common case, done without full-size temporaries."""
    return (workspace.device.type == "cpu" and settings.method == "linear" and len(plan.shape) == 2
            and plan.replacement is None and not plan.token_rows and plan.dora is None
            and not plan.bias)


def _merge_blocked(plan: TensorPlan, base: torch.Tensor, workspace: Workspace,
                   out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """W + sum(w_i s_i B_i A_i) a block of rows at a time (widen, add, check, round), the
    row ranges spread over the pool's threads."""
    rows, cols = plan.shape
    out, fence = workspace.out_tensor(plan.shape, out_dtype)
    factors = [(*c.factors(torch.device("cpu")), c.alpha) for c in plan.low_rank]
    step = max(1, BLOCK_BYTES // (4 * max(cols, 1)))
    blocks = [workspace.tensor((step, cols), torch.float32, f"block{i}")
              for i in range(workspace.pool.workers)]
    limit = torch.finfo(out_dtype).max
    in_place = out_dtype == torch.float32  # nothing to round: update the output rows directly

    def run(worker: int, start: int, stop: int) -> bool:
        finite = True
        for first in range(start, stop, step):
            last = min(first + step, stop)
            work = out[first:last] if in_place else blocks[worker][: last - first]
            work.copy_(base[first:last])
            for left, right, alpha in factors:
                work.addmm_(left[first:last], right, alpha=alpha)
            low, high = torch.aminmax(work)
            # NaN fails both comparisons; Inf, or a value that would round to Inf, one
            finite = finite and bool(low >= -limit) and bool(high <= limit)
            if not in_place:
                out[first:last].copy_(work)
        return finite

    if not all(workspace.pool.map_rows(rows, step, run)):
        adapters = ", ".join(plan.adapters())
        raise UserError(f"{plan.name}: merged values are not finite (NaN or Inf, or beyond "
                        f"{plan.dtype}'s range); check adapter(s) {adapters}")
    return out, fence


def _check_finite(tensor: torch.Tensor, plan: TensorPlan, when: str) -> None:
    # A NaN or Inf anywhere makes the sum non-finite; a reduction is much cheaper than an
    # elementwise isfinite. A finite tensor whose sum overflows gets the exact test.
    total = tensor.sum(dtype=torch.float32) if tensor.is_floating_point() else tensor.sum()
    if bool(torch.isfinite(total)):
        return
    if not bool(torch.isfinite(tensor).all()):
        adapters = ", ".join(plan.adapters()) or "no adapter"
        raise UserError(f"{plan.name}: merged values are not finite (NaN or Inf){when}; "
                        f"check adapter(s) {adapters}")
