"""Segmentation scores from one confusion matrix.

The module accumulates a torchmetrics ``MulticlassConfusionMatrix`` (rows =
target, columns = prediction, ``ignore_index`` pixels dropped); every figure is
derived from it here, so all of them agree and cost one bincount per batch.

Averaging (torchmetrics' macro semantics, as in DESIGN.md):
- mIoU averages the classes present in the prediction or the target;
  a class absent from both has no IoU (NaN per class, left out of the mean).
- mean accuracy averages per-class recall over the classes present in the target.
- pixel accuracy is correct pixels / labelled pixels.
- mean Dice averages per-class Dice (2 TP / (target + predicted pixels)) over the
  same classes as mIoU (present in the prediction or the target).
- frequency-weighted IoU weights each class's IoU by its share of the labelled
  target pixels (classes absent from the target weigh 0).
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
    both = target_count + pred_count
    dice = torch.where(both > 0, 2 * true_positive / both.clamp_min(1), nan)
    total = confmat.sum()
    # Weights are zero exactly where IoU may be NaN (class absent from the target), so drop those.
    frequency = target_count / total.clamp_min(1)
    fw_iou = torch.where(target_count > 0, frequency * iou.nan_to_num(0.0), 0.0).sum()
    return {
        "mIoU": iou.nanmean() if (union > 0).any() else nan,
        "pixel_acc": true_positive.sum() / total if total > 0 else nan,
        "mean_acc": acc.nanmean() if (target_count > 0).any() else nan,
        "mean_dice": dice.nanmean() if (both > 0).any() else nan,
        "fw_iou": fw_iou if total > 0 else nan,
        "iou": iou,
        "acc": acc,
        "dice": dice,
    }


SUMMARY_KEYS = ("mIoU", "pixel_acc", "mean_acc", "mean_dice", "fw_iou")
PER_CLASS_KEYS = ("iou", "acc", "dice")


def flat_scores(confmat: torch.Tensor, class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """The logged names of DESIGN.md: ``<prefix>/mIoU``, ``<prefix>/iou/<class>``, ...

    Also ``<prefix>/mean_dice``, ``<prefix>/fw_iou``, ``<prefix>/acc/<class>`` and
    ``<prefix>/dice/<class>``.
    """
    scores = confusion_scores(confmat)
    flat = {f"{prefix}/{key}": float(scores[key]) for key in SUMMARY_KEYS}
    for key in PER_CLASS_KEYS:
        for name, value in zip(class_names, scores[key].tolist()):
            flat[f"{prefix}/{key}/{name}"] = value
    return flat


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined score (class absent everywhere) is written as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
