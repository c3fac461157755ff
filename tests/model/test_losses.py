"""Losses: values against hand computations (ignored pixels included); every loss/ option trains."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from segexp.model.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    WeightedSum,
)
from tests.conftest import CONF

LOSSES = sorted(path.stem for path in (CONF / "loss").glob("*.yaml"))
IGNORE = 255

# Four pixels, three classes; the last pixel is ignored. Its logits strongly
# favour a wrong class, so counting it would change every value below.
LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 1.5], [-0.3, 1.0, 0.4], [5.0, -5.0, 0.0]]
TARGET = [0, 2, 1, IGNORE]


def as_tensors(logits=LOGITS, target=TARGET):
    """Pixel lists -> (1, C, 1, P) logits and (1, 1, P) target."""
    x = torch.tensor(logits, dtype=torch.float32).T.reshape(1, len(logits[0]), 1, len(logits))
    return x.clone().requires_grad_(True), torch.tensor(target).reshape(1, 1, len(target))


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def labelled():
    return [(softmax(row), y) for row, y in zip(LOGITS, TARGET) if y != IGNORE]


def soft_counts(num_classes=3):
    tp, pred, true = [0.0] * num_classes, [0.0] * num_classes, [0.0] * num_classes
    for probs, y in labelled():
        for c in range(num_classes):
            pred[c] += probs[c]
            true[c] += c == y
            tp[c] += probs[c] * (c == y)
    return tp, pred, true


def test_cross_entropy_with_class_weights():
    weight = [1.0, 2.0, 0.5]
    value = CrossEntropyLoss(ignore_index=IGNORE, weight=weight)(*as_tensors())
    terms = [(weight[y], -math.log(p[y])) for p, y in labelled()]
    expected = sum(w * loss for w, loss in terms) / sum(w for w, _ in terms)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_with_label_smoothing():
    eps = 0.1
    value = CrossEntropyLoss(ignore_index=IGNORE, label_smoothing=eps)(*as_tensors())
    terms = [
        (1 - eps) * -math.log(p[y]) + eps / 3 * sum(-math.log(q) for q in p) for p, y in labelled()
    ]
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dice_over_present_classes_only():
    # Only classes 0..1 are present if the class-2 pixel becomes ignored.
    target = [0, IGNORE, 1, IGNORE]
    value = DiceLoss(ignore_index=IGNORE, smooth=1.0)(*as_tensors(target=target))
    tp, pred, true = [0.0] * 3, [0.0] * 3, [0.0] * 3
    for row, y in zip(LOGITS, target):
        if y == IGNORE:
            continue
        p = softmax(row)
        for c in range(3):
            tp[c] += p[c] * (c == y)
            pred[c] += p[c]
            true[c] += c == y
    dice = [(2 * tp[c] + 1) / (pred[c] + true[c] + 1) for c in (0, 1)]
    assert value.item() == pytest.approx(1 - sum(dice) / 2, rel=1e-5)


def test_tversky_by_hand_and_equal_to_dice_at_one_half():
    alpha, beta, gamma = 0.3, 0.7, 1.5
    value = TverskyLoss(ignore_index=IGNORE, alpha=alpha, beta=beta, gamma=gamma, smooth=1.0)(
        *as_tensors()
    )
    tp, pred, true = soft_counts()
    index = [
        (tp[c] + 1) / (tp[c] + alpha * (pred[c] - tp[c]) + beta * (true[c] - tp[c]) + 1)
        for c in range(3)
    ]
    assert value.item() == pytest.approx(sum((1 - t) ** gamma for t in index) / 3, rel=1e-5)
    tversky = TverskyLoss(ignore_index=IGNORE, alpha=0.5, beta=0.5, gamma=1.0, smooth=0.0)
    dice = DiceLoss(ignore_index=IGNORE, smooth=0.0)
    assert tversky(*as_tensors()).item() == pytest.approx(dice(*as_tensors()).item(), rel=1e-5)


def test_focal_by_hand_and_cross_entropy_at_gamma_zero():
    weight = [0.25, 1.0, 2.0]
    value = FocalLoss(ignore_index=IGNORE, gamma=2.0, weight=weight)(*as_tensors())
    terms = [-weight[y] * (1 - p[y]) ** 2 * math.log(p[y]) for p, y in labelled()]
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    focal = FocalLoss(ignore_index=IGNORE, gamma=0.0)(*as_tensors())
    ce = CrossEntropyLoss(ignore_index=IGNORE)(*as_tensors())
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def lovasz_by_definition(num_classes=3):
    """Mean over present classes of the Lovasz extension of the Jaccard loss (Berman et al., eq. 8-9)."""
    pixels = labelled()
    losses = []
    for c in range(num_classes):
        fg = {i for i, (_, y) in enumerate(pixels) if y == c}
        if not fg:
            continue
        errors = [abs((i in fg) - p[c]) for i, (p, _) in enumerate(pixels)]
        order = sorted(range(len(pixels)), key=lambda i: -errors[i])

        def jaccard_loss(mistakes, fg=fg):
            return 1 - len(fg - mistakes) / len(fg | mistakes)

        loss, previous = 0.0, 0.0
        for k in range(1, len(order) + 1):
            current = jaccard_loss(set(order[:k]))
            loss += errors[order[k - 1]] * (current - previous)
            previous = current
        losses.append(loss)
    return sum(losses) / len(losses)


def test_lovasz_softmax_by_definition():
    value = LovaszSoftmaxLoss(ignore_index=IGNORE)(*as_tensors())
    assert value.item() == pytest.approx(lovasz_by_definition(), rel=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        CrossEntropyLoss(ignore_index=IGNORE),
        CrossEntropyLoss(ignore_index=IGNORE, weight=[1.0, 2.0, 3.0]),
        DiceLoss(ignore_index=IGNORE),
        TverskyLoss(ignore_index=IGNORE),
        FocalLoss(ignore_index=IGNORE),
        LovaszSoftmaxLoss(ignore_index=IGNORE),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_all_ignored_batch_is_zero_not_nan(loss):
    logits, _ = as_tensors()
    value = loss(logits, torch.full((1, 1, 4), IGNORE))
    assert value.dim() == 0 and value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_weighted_sum():
    ce, dice = CrossEntropyLoss(ignore_index=IGNORE), DiceLoss(ignore_index=IGNORE)
    total = WeightedSum({"ce": ce, "dice": dice}, {"ce": 0.3, "dice": 2.0})(*as_tensors())
    expected = 0.3 * ce(*as_tensors()) + 2.0 * dice(*as_tensors())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss.weights names \\['lovasz'\\]"):
        WeightedSum({"ce": ce}, {"lovasz": 1.0})


@pytest.mark.parametrize(
    "ce_options, ignore",
    [
        ({}, IGNORE),
        ({"weight": [0.5, 2.0, 1.0, 3.0]}, IGNORE),
        ({}, 0),
        ({"label_smoothing": 0.1}, IGNORE),
    ],
    ids=["plain", "class-weights", "ignore-is-a-class", "label-smoothing"],
)
def test_weighted_sum_shares_pixel_terms_with_the_same_values_and_gradients(ce_options, ignore):
    """ce + dice in a WeightedSum read one log-softmax (PixelTerms); the value and the
    gradient equal those of each loss computed on its own (torch's cross-entropy)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9, 7) * 3
    target = torch.randint(0, 4, (2, 9, 7))
    target[0, :3] = ignore
    ce = CrossEntropyLoss(ignore_index=ignore, **ce_options)
    dice = DiceLoss(ignore_index=ignore)
    shared_x = logits.clone().requires_grad_(True)
    shared = WeightedSum({"ce": ce, "dice": dice}, {"ce": 0.7, "dice": 1.3})(shared_x, target)
    shared.backward()
    alone_x = logits.clone().requires_grad_(True)
    alone = 0.7 * nn.functional.cross_entropy(
        alone_x,
        target,
        ignore_index=ignore,
        **{k: torch.tensor(v) if k == "weight" else v for k, v in ce_options.items()},
    ) + 1.3 * DiceLoss(ignore_index=ignore)(alone_x, target)
    alone.backward()
    assert shared.item() == pytest.approx(alone.item(), rel=1e-5)
    torch.testing.assert_close(shared_x.grad, alone_x.grad, rtol=1e-4, atol=1e-6)


def test_class_weight_length_is_checked():
    with pytest.raises(ValueError, match="loss.weight has 2 entries.*3 classes"):
        CrossEntropyLoss(weight=[1.0, 2.0])(*as_tensors())
    with pytest.raises(ValueError, match="loss.weight has 2 entries.*3 classes"):
        FocalLoss(weight=[1.0, 2.0])(*as_tensors())


@pytest.mark.parametrize("name", LOSSES)
def test_one_step_lowers_every_loss_option(compose_cfg, name):
    cfg = compose_cfg([f"loss={name}"])
    criterion = instantiate(cfg.loss)
    num_classes = cfg.data.num_classes
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
    images = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, num_classes, (2, 16, 16))
    target[:, :3] = cfg.data.ignore_index  # some ignored pixels
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before = criterion(net(images), target)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = criterion(net(images), target)
    assert torch.isfinite(before) and after < before, (name, before.item(), after.item())
