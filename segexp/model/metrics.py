"""Segmentation scores from one confusion matrix.

The module accumulates one confusion matrix per stage (``EvalState``, a torchmetrics
Metric: rows = target, columns = prediction, ``ignore_index`` pixels dropped; summed
over DDP processes); every figure is derived from it here, so all of them agree and
cost one bincount per batch.

Averaging (torchmetrics' macro semantics):

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
from torchmetrics import Metric


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
    """The logged metric names: ``<prefix>/mIoU``, ``<prefix>/iou/<class>``, ...

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


def argmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)`` for (B, C, H, W) logits, ties to the lower class as argmax does.

    On the CPU, torch's argmax over the channel dimension of an NCHW tensor is slow
    (3.2 ms for 4 x 6 x 64 x 64 here, more than all other metric work together), while
    ``max(dim=1)`` returns the same indices (the first maximum) in 0.18 ms.
    """
    return logits.max(dim=1).indices


class EvalState(Metric):
    """What one evaluation stage accumulates: the confusion matrix and the mean loss.

    ``update(preds, target, loss)``: predicted and target class maps (B, H, W) and the
    batch's mean loss (weighted by batch size, as Lightning averages logged values).
    Target pixels equal to ``ignore_index`` (or outside ``[0, num_classes)``) are dropped
    in the same bincount as the rest: no boolean indexing per batch, which makes
    torchmetrics' MulticlassConfusionMatrix much slower on small CPU batches
    (docs/benchmarks.md). States are sums, so DDP processes combine exactly.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None
    ) -> None:
        classes = self.num_classes
        # Targets outside [0, C) (e.g. 255, anything unlabelled) clamp to -1 or C: rows of
        # their own in a (C + 2) x C matrix, cut off below. Three tensor operations where a
        # mask of dropped pixels takes six (this runs on every validation batch).
        rows = target.reshape(-1).long().clamp(-1, classes)
        if self.ignore_index is not None and 0 <= self.ignore_index < classes:
            rows = rows.masked_fill(rows == self.ignore_index, classes)  # also a class id
        keys = torch.add(preds.reshape(-1).long(), rows.add_(1), alpha=classes)
        counts = torch.bincount(keys, minlength=(classes + 2) * classes)
        self.confmat += counts[classes : classes * (classes + 1)].view(classes, classes)
        if loss is not None:
            self.loss_sum += loss.detach().double() * len(preds)
            self.samples += len(preds)

    def compute(self) -> torch.Tensor:
        """The (C, C) confusion matrix (rows target, columns prediction), summed over processes.

        Also sets ``mean_loss``: the batch-size-weighted mean of the losses given to update
        (NaN if none), from the same synced states.
        """
        self.mean_loss = (
            (self.loss_sum / self.samples).float()
            if self.samples > 0
            else torch.tensor(float("nan"))
        )
        return self.confmat
