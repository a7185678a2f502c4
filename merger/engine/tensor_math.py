"""Applying a TensorRecipe to one base tensor: float32 math, one rounding, finiteness check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lorafuse.errors import UserError
from lorafuse.merger.engine.combine import combine_task_vectors
from lorafuse.merger.engine.layout import TensorRecipe
from lorafuse.merger.engine.lora import add_bias, add_low_rank, apply_dora, delta
from lorafuse.merger.files.background import OrderedIO, RowPool
from lorafuse.merger.files.header import FLOAT_DTYPES
from lorafuse.merger.files.reader import DTYPES

# Rows per block in the blocked CPU path: about 1 MiB of float32 per block stays in cache
# while it is widened, updated and rounded.
BLOCK_BYTES = 1 << 20
# Rows per group when a large tensor is merged group by group (read, merge, write): about
# 8 MiB of float32, so read and output buffers stay a few MiB whatever the tensor's size.
GROUP_BYTES = 8 << 20


@dataclass
class CombineSettings:
    method: str = "linear"
    density: float | None = None
    seed: int = 0


@dataclass
class Workspace:
    """Byte buffers reused from tensor to tensor, sized once for the largest tensor (fresh
    large allocations cost page faults and fragment the heap), the writer thread that
    writes them, and the threads that compute row blocks."""

    device: torch.device
    io: OrderedIO
    pool: RowPool
    _buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    _out_turn: int = 0

    def reserve(self, role: str, nbytes: int, device: torch.device | None = None) -> None:
        device = device or self.device
        key = f"{role}:{device}"
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < nbytes:
            self._buffers[key] = torch.empty(max(nbytes, 8), dtype=torch.uint8, device=device)

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, role: str,
               device: torch.device | None = None) -> torch.Tensor:
        return self._buffer(shape, dtype, role, device or self.device)[0]

    def _buffer(self, shape, dtype, role, device) -> tuple[torch.Tensor, torch.Tensor]:
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * dtype.itemsize
        self.reserve(role, nbytes, device)
        buffer = self._buffers[f"{role}:{device}"]
        return buffer[:nbytes].view(dtype).view(shape), buffer

    def out_tensor(self, shape: tuple[int, ...], dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A CPU output buffer and its fence; two alternate, so one is written out while the
        next tensor is computed into the other."""
        self._out_turn += 1
        role = f"out{self._out_turn % 2}"
        self.io.wait(self._buffers.get(f"{role}:cpu"))
        return self._buffer(shape, dtype, role, torch.device("cpu"))


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


def merge_tensor(recipe: TensorRecipe, base: torch.Tensor, settings: CombineSettings,
                 workspace: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged tensor in the recipe's output dtype and the buffer holding it (its fence)."""
    out_dtype = DTYPES[recipe.dtype]
    if _blockable(recipe, settings, workspace):
        return _merge_blocked(recipe, base, workspace, out_dtype)
    with torch_threads(workspace.pool.workers):
        work = workspace.tensor(recipe.shape, torch.float32, "work")
        work.copy_(recipe.replacement.load() if recipe.replacement is not None else base)
        for rows in recipe.token_rows:
            index = torch.tensor(rows.indices, dtype=torch.long, device=work.device)
            work.index_copy_(0, index, rows.values.to(device=work.device, dtype=torch.float32))
        if recipe.dora is not None:
            apply_dora(work, recipe.dora)
        _add_updates(work, recipe, settings)
        _check_finite(work, recipe, "")
        out, fence = workspace.out_tensor(recipe.shape, out_dtype)
        out.copy_(work)
        if out_dtype != torch.float32:
            _check_finite(out, recipe, f" after rounding to {recipe.dtype}")
    return out, fence


def _add_updates(work: torch.Tensor, recipe: TensorRecipe, settings: CombineSettings) -> None:
    low_rank, bias = recipe.low_rank, recipe.bias
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
                                   settings.seed, recipe.name))


def _blockable(recipe: TensorRecipe, settings: CombineSettings, workspace: Workspace) -> bool:
    return blockable(recipe, settings, workspace.device)


def blockable(recipe: TensorRecipe, settings: CombineSettings, device: torch.device) -> bool:
    """Plain linear LoRA on a CPU: the common case, done without full-size temporaries."""
    return (device.type == "cpu" and settings.method == "linear" and len(recipe.shape) == 2
            and recipe.replacement is None and not recipe.token_rows and recipe.dora is None
            and not recipe.bias)


def reserve_for(workspace: Workspace, recipes_by_entry, settings: CombineSettings) -> None:
    """Allocate every buffer at its final size before streaming starts (the input's are
    ReadAhead's)."""
    out = work = 0
    block = BLOCK_BYTES
    for entry, recipes in recipes_by_entry:
        if len(recipes) == 1 and not recipes[0].changed and recipes[0].dtype == entry.dtype:
            continue  # copied as raw bytes
        if grouped(entry, recipes, settings, workspace.device):
            rows = min(recipes[0].shape[0], group_rows(recipes[0].shape[1]))
            numel = rows * recipes[0].shape[1]
            out = max(out, numel * DTYPES[recipes[0].dtype].itemsize)
            block = max(block, recipes[0].shape[1] * 4)
            continue
        for recipe in recipes:
            numel = 1
            for dim in recipe.shape:
                numel *= dim
            out = max(out, numel * DTYPES[recipe.dtype].itemsize)
            if recipe.changed and not blockable(recipe, settings, workspace.device):
                work = max(work, numel * 4)
            elif len(recipe.shape) == 2:
                block = max(block, recipe.shape[1] * 4)
    for role in ("out0", "out1"):
        workspace.reserve(role, out, torch.device("cpu"))
    if work:
        workspace.reserve("work", work)
    for worker in range(workspace.pool.workers):
        workspace.reserve(f"block{worker}", block)


def _merge_blocked(recipe: TensorRecipe, base: torch.Tensor, workspace: Workspace,
                   out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """W + sum(w_i s_i B_i A_i) a block of rows at a time (widen, add, check, round), the
    row ranges spread over the pool's threads."""
    out, fence = workspace.out_tensor(recipe.shape, out_dtype)
    rows = BlockedRows(recipe, base.dtype, workspace)
    rows.merge(0, base, out)
    return out, fence


def block_rows(cols: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(cols, 1)))


def group_rows(cols: int) -> int:
    """Rows per group: a multiple of the block rows, about GROUP_BYTES of float32."""
    step = block_rows(cols)
    return max(1, GROUP_BYTES // (4 * max(cols, 1)) // step) * step


def grouped(entry, recipes: list[TensorRecipe], settings: CombineSettings,
            device: torch.device) -> bool:
    """One plain linear LoRA target of the base tensor's own shape and a float dtype: merged
    group of rows by group of rows (BlockedRows), straight from the file."""
    return (len(recipes) == 1 and recipes[0].changed and blockable(recipes[0], settings, device)
            and tuple(entry.shape) == tuple(recipes[0].shape) and min(entry.shape) > 0
            and entry.dtype in FLOAT_DTYPES)


class BlockedRows:
    """The blocked merge of one plain linear LoRA target, row range by row range: a large
    tensor goes through in groups of rows, so no buffer has to hold all of it."""

    def __init__(self, recipe: TensorRecipe, base_dtype: torch.dtype, workspace: Workspace):
        self.recipe = recipe
        self.workspace = workspace
        self.out_dtype = DTYPES[recipe.dtype]
        self.cols = recipe.shape[1]
        self.factors = [(*c.factors(torch.device("cpu")), c.alpha) for c in recipe.low_rank]
        self.step = block_rows(self.cols)
        self.check_range = not _rounding_cannot_overflow(base_dtype, self.out_dtype,
                                                         self.factors)

    def merge(self, offset: int, base: torch.Tensor, out: torch.Tensor) -> None:
        """out = merged rows offset .. offset + len(base), rounded to the output dtype."""
        workspace, cols, step = self.workspace, self.cols, self.step
        blocks = [workspace.tensor((step, cols), torch.float32, f"block{i}")
                  for i in range(workspace.pool.workers)]
        in_place = self.out_dtype == torch.float32  # nothing to round: update `out` directly
        factors, check_range, out_dtype = self.factors, self.check_range, self.out_dtype

        def run(worker: int, start: int, stop: int) -> bool:
            total = torch.zeros((), dtype=torch.float32)
            in_range = True
            for first in range(start, stop, step):
                last = min(first + step, stop)
                work = out[first:last] if in_place else blocks[worker][: last - first]
                work.copy_(base[first:last])
                for left, right, alpha in factors:
                    work.addmm_(left[offset + first:offset + last], right, alpha=alpha)
                # a NaN or Inf anywhere makes the sum non-finite: far cheaper than isfinite()
                total += work.sum()
                if check_range:
                    low, high = torch.aminmax(work)
                    limit = torch.finfo(out_dtype).max
                    in_range = in_range and bool(low >= -limit) and bool(high <= limit)
                if not in_place:
                    out[first:last].copy_(work)
            return bool(torch.isfinite(total)) and in_range

        if not all(workspace.pool.map_rows(base.shape[0], step, run)):
            # a finite tensor whose sum overflowed gets the exact test
            _check_finite(out, self.recipe, f" (in {self.recipe.dtype})")


def _rounding_cannot_overflow(base_dtype: torch.dtype, out_dtype: torch.dtype,
                              factors: list[tuple[torch.Tensor, torch.Tensor, float]]) -> bool:
    """True when |W + sum(alpha B A)| stays below the output dtype's overflow point for any W
    of the base dtype: then a finite float32 result also rounds to a finite value."""
    out_max = torch.finfo(out_dtype).max
    if torch.finfo(base_dtype).max > out_max:
        return False  # e.g. a float32 base written as float16
    bound = sum(abs(alpha) * left.shape[1] * float(left.abs().max()) * float(right.abs().max())
                for left, right, alpha in factors)
    # the next representable value above out_max, halved: the rounding threshold to Inf
    eps = torch.finfo(out_dtype).eps
    return bound < out_max * eps / 2


def _check_finite(tensor: torch.Tensor, recipe: TensorRecipe, when: str) -> None:
    # A NaN or Inf anywhere makes the sum non-finite; a reduction is much cheaper than an
    # elementwise isfinite. A finite tensor whose sum overflows gets the exact test.
    total = tensor.sum(dtype=torch.float32) if tensor.is_floating_point() else tensor.sum()
    if bool(torch.isfinite(total)):
        return
    if not bool(torch.isfinite(tensor).all()):
        adapters = ", ".join(recipe.adapters()) or "no adapter"
        raise UserError(f"{recipe.name}: merged values are not finite (NaN or Inf){when}; "
                        f"check adapter(s) {adapters}")
