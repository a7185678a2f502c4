"""Combining adapters' task vectors on one tensor: linear, TIES, DARE (PEFT's merge_utils)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

RANDOM_METHODS = ("dare_linear", "dare_ties")


def tensor_seed(seed: int, tensor_name: str) -> int:
    """DARE's seed for one tensor: fixed by (seed, name), so the result does not depend on
    the order tensors are processed in, on sharding, or on which other tensors exist."""
    digest = hashlib.sha256(f"{seed}:{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def combine_task_vectors(
    method: str,
    task_vectors: list[torch.Tensor],
    weights: list[float],
    density: float | None,
    seed: int,
    tensor_name: str,
) -> torch.Tensor:
    """The combined update sum(w_i * t_i) under `method`, via peft.utils.merge_utils."""
    from peft.utils import merge_utils

    weight_tensor = torch.tensor(weights, dtype=torch.float32, device=task_vectors[0].device)
    if method == "linear":
        return merge_utils.task_arithmetic(task_vectors, weight_tensor)
    functions: dict[str, Callable[..., torch.Tensor]] = {
        "ties": merge_utils.ties,
        "dare_linear": merge_utils.dare_linear,
        "dare_ties": merge_utils.dare_ties,
    }
    function = functions[method]
    if method not in RANDOM_METHODS:
        return function(task_vectors, weight_tensor, density)
    device = task_vectors[0].device
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if device.type == "cuda" else 0)
    devices = [index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(tensor_seed(seed, tensor_name))
        return function(task_vectors, weight_tensor, density)
