"""Segmentation scores from one confusion matrix.

The module accumulates a torchmetrics ``MulticlassConfusionMatrix`` (rows =
target, columns = prediction, ``ignore_index`` pixels dropped); every figure is
derived from it here, so all of them agree and cost one bincount per batch.

Averaging (torchmetrics' macro semantics, as in DESIGN.md):
- mIoU averages the classes present in the prediction or the target;
  a class absent from both has no IoU (NaN per class, left out of the mean).
- mean accuracy averages per-class recall over the classes present in the target.
- pixel accuracy is correct pixels / labelled pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def confusion_scores(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class and mean scores from a (C, C) confusion matrix (rows target, cols prediction)."""
    confmat = confmat.double()
    true_positive = confmat.diagonal()
    target_count = confmat.sum(dim=1)  # pixels of each class in the target
    pred_count = confmat.sum(dim=0)  # pixels predicted as each class
    union = target_count + pred_count - true_positive
    nan = torch.tensor(float("nan"), dtype=confmat.dtype, device=confmat.device)

    iou = torch.where(union > 0, true_positive / union.clamp_min(1), nan)
    acc = torch.where(target_count > 0, true_positive / target_count.clamp_min(1), nan)
    total = confmat.sum()
    return {
        "mIoU": iou.nanmean() if (union > 0).any() else nan,
        "pixel_acc": true_positive.sum() / total if total > 0 else nan,
        "mean_acc": acc.nanmean() if (target_count > 0).any() else nan,
        "iou": iou,
        "acc": acc,
    }


def flat_scores(confmat: torch.Tensor, class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """The logged names of DESIGN.md: ``<prefix>/mIoU``, ``<prefix>/iou/<class>``, ..."""
    scores = confusion_scores(confmat)
    flat = {f"{prefix}/{key}": float(scores[key]) for key in ("mIoU", "pixel_acc", "mean_acc")}
    for name, value in zip(class_names, scores["iou"].tolist()):
        flat[f"{prefix}/iou/{name}"] = value
    return flat


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined score (class absent everywhere) is written as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
