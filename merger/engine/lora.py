"""The weight update of one adapter on one tensor, in float32: LoRA, embedding LoRA, DoRA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorafuse.merger.engine.adapters import LoraPart


@dataclass(frozen=True)
class Contribution:
    """One adapter's low-rank part on one tensor, with the tensor's layout and the merge weight."""

    adapter: str
    weight: float
    part: LoraPart
    # True when the base tensor is stored (in, out): GPT-2 Conv1D (PEFT's fan_in_fan_out)
    # and embeddings, whose LoRA delta PEFT writes as (B @ A).T.
    transposed: bool

    def factors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) with left @ right == B @ A in the base tensor's layout."""
        a = self.part.a.to(device=device, dtype=torch.float32)
        b = self.part.b.to(device=device, dtype=torch.float32)
        return (a.t(), b.t()) if self.transposed else (b, a)

    @property
    def alpha(self) -> float:
        return self.weight * self.part.scaling


def expected_shape(contribution: Contribution) -> tuple[int, int]:
    """The shape of the base tensor this low-rank pair fits."""
    out_features, in_features = contribution.part.b.shape[0], contribution.part.a.shape[1]
    return (in_features, out_features) if contribution.transposed else (out_features,
                                                                          in_features)


def delta(contribution: Contribution, device: torch.device) -> torch.Tensor:
    """The scaled task vector s * B @ A in the base layout (weight not applied)."""
    left, right = contribution.factors(device)
    return torch.mm(left, right).mul_(contribution.part.scaling)


def add_low_rank(work: torch.Tensor, contribution: Contribution) -> None:
    """work += w * s * B @ A, fused (no full-size temporary)."""
    left, right = contribution.factors(work.device)
    work.addmm_(left, right, alpha=contribution.alpha)


def apply_dora(work: torch.Tensor, contribution: Contribution) -> None:
    """DoRA: W' = m / ||W + dW|| * (W + dW), the norm taken per output feature.

    As in PEFT, the norm is taken over the input dimension of the layer: rows of a Linear
    weight (out, in), columns of a Conv1D weight (in, out) or of an embedding (vocab, dim).
    """
    work.add_(delta(contribution, work.device))
    dim = 0 if contribution.transposed else 1
    norm = torch.linalg.norm(work, dim=dim)
    magnitude = contribution.part.magnitude.to(device=work.device, dtype=torch.float32)
    factor = magnitude / norm
    work.mul_(factor.view(1, -1) if contribution.transposed else factor.view(-1, 1))


def add_bias(work: torch.Tensor, contribution: Contribution) -> None:
    """lora_bias: the base bias gains w * s * lora_B.bias."""
    bias = contribution.part.bias.to(device=work.device, dtype=torch.float32)
    work.add_(bias, alpha=contribution.alpha)
