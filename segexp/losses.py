"""Losses from config: cross-entropy, Dice, and weighted sums of them.

Every loss takes logits (B, C, H, W) and integer targets (B, H, W) and ignores
pixels equal to ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that accepts class weights as a plain list (from YAML)."""

    def __init__(
        self,
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        weight_tensor = torch.as_tensor(list(weight), dtype=torch.float32) if weight is not None else None
        super().__init__(weight=weight_tensor, ignore_index=ignore_index, label_smoothing=label_smoothing)


class DiceLoss(nn.Module):
    """Multiclass soft Dice loss, 1 - mean over classes of 2|P∩T| / (|P| + |T|).

    Sums run over the whole batch and ignored pixels contribute nothing. Classes
    absent from the target are left out of the mean (their Dice is undefined and
    would only push their probabilities to zero).
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1)  # (B, C, H, W)
        valid = target != self.ignore_index  # (B, H, W)
        one_hot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2)
        valid = valid.unsqueeze(1)
        probs = probs * valid
        one_hot = one_hot * valid
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)  # (C,)
        cardinality = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        present = one_hot.sum(dims) > 0
        if not present.any():
            return logits.sum() * 0.0
        return 1.0 - dice[present].mean()


class WeightedSum(nn.Module):
    """Weighted sum of named losses, e.g. ``{ce: CrossEntropyLoss, dice: DiceLoss}``."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        weights = dict(weights or {})
        unknown = set(weights) - set(self.losses)
        if unknown:
            raise ValueError(f"loss.weights names {sorted(unknown)} but loss.losses has {sorted(self.losses)}.")
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
