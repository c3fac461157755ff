"""Losses from config: cross-entropy, Dice, focal, Lovasz-softmax, Tversky, and weighted sums.

Every loss takes logits (B, C, H, W) and integer targets (B, H, W), ignores
pixels equal to ``ignore_index``, and returns a zero (still attached to the
graph) when a batch has no labelled pixel at all, rather than NaN.

``smp.losses`` is used where it is right for multiclass segmentation with an
ignore label: its Lovasz loss (Berman's reference code) drops ignored pixels
before sorting. Its FocalLoss is a per-class sigmoid (one-vs-rest) loss, not
the softmax focal loss, and its Dice/Tversky average over all classes with
absent ones counted as zero (the value shrinks with the number of absent
classes), so those are written here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from segexp.errors import UserError


def _class_weights(weight: Sequence[float] | None) -> torch.Tensor | None:
    return torch.as_tensor(list(weight), dtype=torch.float32) if weight is not None else None


def _check_weight(weight: torch.Tensor | None, num_classes: int, key: str) -> None:
    if weight is not None and weight.numel() != num_classes:
        raise UserError(
            f"{key} has {weight.numel()} entries but the model predicts {num_classes} classes; "
            f"give one weight per class (a list of {num_classes} floats) or null."
        )


class PixelTerms:
    """What several losses read from the same logits and target, each computed once.

    A ``WeightedSum`` hands one of these to every member that takes it (``ce_dice``: one
    log-softmax for both terms instead of a log-softmax and a softmax, one gather of each
    pixel's own class): the same values and gradients as computing them in each loss, at
    about half the cost of the pair (docs/benchmarks.md, figure 3).
    """

    def __init__(self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
        self.logits = logits
        self.target = target
        self.ignore_index = ignore_index
        self.num_classes = logits.shape[1]

    @functools.cached_property
    def valid(self) -> torch.Tensor:
        """(B, H, W) bool: labelled pixels."""
        return self.target != self.ignore_index

    @functools.cached_property
    def labels(self) -> torch.Tensor:
        """(B, H, W) long: each pixel's class, clamped into [0, C) where ignored (every use
        masks those pixels by ``valid``; the datasets reject other labels outside [0, C))."""
        return self.target.long().clamp(0, self.num_classes - 1)

    @functools.cached_property
    def log_probs(self) -> torch.Tensor:
        return self.logits.float().log_softmax(dim=1)

    @functools.cached_property
    def probs(self) -> torch.Tensor:
        if "log_probs" in self.__dict__:  # a loss asked for log-probabilities already
            return self.log_probs.exp()
        return self.logits.float().softmax(dim=1)

    @functools.cached_property
    def own_log_prob(self) -> torch.Tensor:
        """(B, H, W): log p(the pixel's own class); meaningless where not ``valid``."""
        return self.log_probs.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def own_prob(self) -> torch.Tensor:
        if "own_log_prob" in self.__dict__:
            return self.own_log_prob.exp()
        return self.probs.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def soft_counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Soft true positives, predicted and target totals per class over labelled pixels:
        (C,) each. The true positives are the probability of each pixel's own class, summed
        per class (index_add), not a (B, C, H, W) one-hot product: the same numbers and
        gradients at a fraction of the cost."""
        classes, valid, probs = self.num_classes, self.valid, self.probs
        pred_total = (probs * valid.unsqueeze(1)).sum((0, 2, 3))
        own = self.own_prob() * valid
        true_pos = probs.new_zeros(classes).index_add(0, self.labels.reshape(-1), own.reshape(-1))
        # Ignored pixels counted in an extra bin and cut off: boolean indexing costs 7x more.
        if 0 <= self.ignore_index < classes:  # an ignored id that is also a class id
            binned = torch.where(valid, self.labels, classes)
        else:  # ignore_index and anything else outside [0, C) go to the extra bin C (a
            # negative ignore_index such as -1 too: clamped to -1, then C by the remainder)
            binned = self.target.long().clamp(-1, classes).remainder(classes + 1)
        target_total = torch.bincount(binned.reshape(-1), minlength=classes + 1)
        return true_pos, pred_total, target_total[:classes].to(probs.dtype)


def _present_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``present`` entries (0 when none), with no boolean index
    and no host sync."""
    return (values * present).sum() / present.sum().clamp_min(1)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` with class weights as a plain list (from YAML).

    With weights, the mean is ``sum(w[y] * loss) / sum(w[y])`` over labelled
    pixels (torch's definition); label smoothing spreads ``label_smoothing``
    of the target mass uniformly over the classes.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            weight=_class_weights(weight),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, terms: PixelTerms | None = None
    ) -> torch.Tensor:
        _check_weight(self.weight, logits.shape[1], "loss.weight")
        if terms is not None and self.label_smoothing == 0:
            # From the shared log-probabilities: torch's definition, sum(w[y] * -log p_y) /
            # sum(w[y]) over labelled pixels, and 0 (not 0/0) when there is none.
            weight = terms.valid.to(terms.log_probs.dtype)
            if self.weight is not None:
                weight = weight * self.weight.to(weight.device)[terms.labels]
            return -(weight * terms.own_log_prob).sum() / weight.sum().clamp_min(1e-12)
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # torch would return 0/0 = NaN
        return super().forward(logits.float(), target)

    def takes_terms(self) -> bool:
        return self.label_smoothing == 0


class _SoftCountLoss(nn.Module):
    """A loss of the soft per-class counts (Dice, Tversky): it reads them from the
    ``PixelTerms`` a ``WeightedSum`` shares, or from its own."""

    ignore_index: int

    def counts(
        self, logits: torch.Tensor, target: torch.Tensor, terms: PixelTerms | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if terms is None:
            terms = PixelTerms(logits, target, self.ignore_index)
        return terms.soft_counts()

    def takes_terms(self) -> bool:
        return True


class DiceLoss(_SoftCountLoss):
    """Multiclass soft Dice loss, 1 - mean over classes of (2|P∩T| + s) / (|P| + |T| + s).

    Sums run over the whole batch and ignored pixels contribute nothing. Classes
    absent from the target are left out of the mean (their Dice is undefined and
    would only push their probabilities to zero).
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.eps = eps

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, terms: PixelTerms | None = None
    ) -> torch.Tensor:
        intersection, pred_total, target_total = self.counts(logits, target, terms)
        cardinality = pred_total + target_total
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        present = target_total > 0
        # No class present (no labelled pixel): 0, still attached to the graph.
        return (1.0 - _present_mean(dice, present)) * present.any()


class TverskyLoss(_SoftCountLoss):
    """Tversky loss (Salehi et al. 2017), optionally focal (Abraham & Khan 2019).

    Per class, TI = (TP + s) / (TP + alpha * FP + beta * FN + s) with soft counts
    over labelled pixels; the loss is ``mean over present classes of (1 - TI) ** gamma``.
    ``beta > alpha`` penalises missed pixels more than false alarms (recall-leaning);
    alpha = beta = 0.5 and gamma = 1 is Dice.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.smooth = smooth
        self.eps = eps

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, terms: PixelTerms | None = None
    ) -> torch.Tensor:
        true_pos, pred_total, target_total = self.counts(logits, target, terms)
        false_pos = pred_total - true_pos
        false_neg = target_total - true_pos
        denominator = true_pos + self.alpha * false_pos + self.beta * false_neg + self.smooth
        tversky = (true_pos + self.smooth) / denominator.clamp_min(self.eps)
        present = target_total > 0
        per_class = (1.0 - tversky).clamp_min(0) ** self.gamma
        # No class present (no labelled pixel): 0, still attached to the graph.
        return _present_mean(per_class, present) * present.any()


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): mean over labelled pixels of -a[y] (1 - p_y)^gamma log p_y.

    ``gamma`` = 0 with no ``weight`` is plain cross-entropy. ``weight`` (the
    paper's alpha, one per class) scales each pixel's term by its class weight;
    the mean still divides by the number of labelled pixels.
    """

    def __init__(
        self, ignore_index: int = 255, gamma: float = 2.0, weight: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("weight", _class_weights(weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_weight(self.weight, logits.shape[1], "loss.weight")
        valid = target != self.ignore_index  # (B, H, W)
        if not valid.any():
            return logits.sum() * 0.0
        safe_target = torch.where(valid, target, 0).unsqueeze(1)  # (B, 1, H, W)
        log_prob = logits.float().log_softmax(dim=1).gather(1, safe_target).squeeze(1)  # (B, H, W)
        loss = -((1.0 - log_prob.exp()) ** self.gamma) * log_prob
        if self.weight is not None:
            loss = loss * self.weight[safe_target.squeeze(1)]
        return loss[valid].mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al. 2018): a convex surrogate of 1 - IoU, averaged over present classes.

    Wraps ``smp.losses.LovaszLoss`` (multiclass, ignored pixels dropped before
    the sort). ``per_image`` averages the loss per image instead of over the batch.
    """

    def __init__(self, ignore_index: int = 255, per_image: bool = False) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import LovaszLoss

        self.ignore_index = ignore_index
        self.lovasz = LovaszLoss(mode="multiclass", per_image=per_image, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0  # smp returns an empty tensor here
        return self.lovasz(logits.float(), target)


class WeightedSum(nn.Module):
    """Weighted sum of named losses, e.g. ``{ce: CrossEntropyLoss, dice: DiceLoss}``."""

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        weights = dict(weights or {})
        unknown = set(weights) - set(self.losses)
        if unknown:
            raise UserError(
                f"loss.weights names {sorted(unknown)} but loss.losses has {sorted(self.losses)}; "
                "name each weight after one of the losses."
            )
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Members that read the same pixel terms (same ignore_index) get them computed once.
        shared: dict[int, PixelTerms] = {}
        total = None
        for name, loss in self.losses.items():
            if getattr(loss, "takes_terms", lambda: False)():
                ignore = loss.ignore_index
                terms = shared.setdefault(ignore, PixelTerms(logits, target, ignore))
                value = loss(logits, target, terms=terms)
            else:
                value = loss(logits, target)
            term = self.weights[name] * value
            total = term if total is None else total + term
        return total if total is not None else logits.sum() * 0.0
