"""Losses: values against hand computations (ignored pixels included); every loss/ option trains."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
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


def test_defaults_are_the_documented_ones():
    """ignore_index 255, Dice smooth 1, Tversky alpha 0.3 / beta 0.7 / gamma 1 / smooth 1, focal
    gamma 2: each default against the hand computation."""
    logits, target = as_tensors()
    tp, pred, true = soft_counts()
    dice = [(2 * tp[c] + 1) / (pred[c] + true[c] + 1) for c in range(3)]
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - sum(dice) / 3, rel=1e-5)
    index = [
        (tp[c] + 1) / (tp[c] + 0.3 * (pred[c] - tp[c]) + 0.7 * (true[c] - tp[c]) + 1)
        for c in range(3)
    ]
    assert TverskyLoss()(logits, target).item() == pytest.approx(
        sum(1 - t for t in index) / 3, rel=1e-5
    )
    focal = [-((1 - p[y]) ** 2) * math.log(p[y]) for p, y in labelled()]
    assert FocalLoss()(logits, target).item() == pytest.approx(sum(focal) / 3, rel=1e-5)
    ce = [-math.log(p[y]) for p, y in labelled()]
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(
        lovasz_by_definition(), rel=1e-5
    )


def test_weighted_sum_weighs_unnamed_members_one_and_sums_nothing_to_zero():
    ce, dice = CrossEntropyLoss(), DiceLoss()
    total = WeightedSum({"ce": ce, "dice": dice}, {"ce": 0.3})(*as_tensors())
    assert total.item() == pytest.approx(
        0.3 * ce(*as_tensors()).item() + dice(*as_tensors()).item(), rel=1e-6
    )
    logits, target = as_tensors()
    nothing = WeightedSum({})(logits, target)
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_members_with_other_ignore_labels_each_drop_their_own():
    """ce ignoring 255 and Dice ignoring class 0 in one sum: each reads its own pixel terms."""
    target = [0, 2, 1, 1]
    ce, dice = CrossEntropyLoss(ignore_index=IGNORE), DiceLoss(ignore_index=0)
    total = WeightedSum({"ce": ce, "dice": dice})(*as_tensors(target=target))
    probs = [softmax(row) for row in LOGITS]
    ce_value = sum(-math.log(p[y]) for p, y in zip(probs, target)) / 4
    kept = [(p, y) for p, y in zip(probs, target) if y != 0]  # Dice: class 0 ignored
    tp = [sum(p[c] for p, y in kept if y == c) for c in range(3)]
    pred = [sum(p[c] for p, _ in kept) for c in range(3)]
    true = [sum(y == c for _, y in kept) for c in range(3)]
    dice_value = 1 - sum((2 * tp[c] + 1) / (pred[c] + true[c] + 1) for c in (1, 2)) / 2
    assert total.item() == pytest.approx(ce_value + dice_value, rel=1e-5)


def test_error_messages_name_the_setting_and_the_fix():
    with pytest.raises(ValueError) as error:
        CrossEntropyLoss(weight=[1.0, 2.0])(*as_tensors())
    assert str(error.value) == (
        "loss.weight has 2 entries but the model predicts 3 classes; give one weight per class "
        "(a list of 3 floats) or null."
    )
    with pytest.raises(ValueError) as error:
        WeightedSum({"ce": CrossEntropyLoss(), "dice": DiceLoss()}, {"lovasz": 1.0, "ce": 2.0})
    assert str(error.value) == (
        "loss.weights names ['lovasz'] but loss.losses has ['ce', 'dice']; "
        "name each weight after one of the losses."
    )


def test_focal_class_weights_are_not_saved_in_checkpoints():
    """They come from the config (like cross-entropy's): not a state_dict entry a checkpoint
    of the same model without weights would lack."""
    assert "weight" not in FocalLoss(weight=[1.0, 2.0, 3.0]).state_dict()


def test_lovasz_per_image_averages_the_images():
    first, target1 = as_tensors()
    second, target2 = as_tensors(LOGITS[::-1], [2, 0, IGNORE, 1])
    batch = torch.cat([first, second]), torch.cat([target1, target2])
    each = [LovaszSoftmaxLoss()(first, target1), LovaszSoftmaxLoss()(second, target2)]
    value = LovaszSoftmaxLoss(per_image=True)(*batch)
    assert value.item() == pytest.approx(sum(v.item() for v in each) / 2, rel=1e-5)
    assert LovaszSoftmaxLoss()(*batch).item() != pytest.approx(value.item(), rel=1e-3)


def test_weighted_sum_reads_each_shared_term_once(monkeypatch):
    """ce + Dice + Tversky: one log-softmax and one gather of each pixel's own class for all
    three (PixelTerms), no softmax; a member that takes no terms (focal) computes its own."""
    calls = Counter()
    for name in ("softmax", "log_softmax", "gather"):

        def counted(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    members = {"ce": CrossEntropyLoss(), "dice": DiceLoss(), "tversky": TverskyLoss()}
    total = WeightedSum(members)(*as_tensors())
    assert calls == {"log_softmax": 1, "gather": 1}
    monkeypatch.undo()
    alone = sum(loss(*as_tensors()) for loss in members.values())
    assert total.item() == pytest.approx(alone.item(), rel=1e-6)
    focal = FocalLoss()
    with_focal = WeightedSum({"ce": CrossEntropyLoss(), "focal": focal})(*as_tensors())
    expected = CrossEntropyLoss()(*as_tensors()) + focal(*as_tensors())
    assert with_focal.item() == pytest.approx(expected.item(), rel=1e-6)


def test_integer_class_weights_from_yaml_work_like_floats():
    """``weight: [1, 2, 1]`` in YAML is a list of ints."""
    for loss in (CrossEntropyLoss, FocalLoss):
        as_ints = loss(weight=[1, 3, 2])(*as_tensors())
        assert as_ints.item() == pytest.approx(loss(weight=[1.0, 3.0, 2.0])(*as_tensors()).item())


def test_small_class_weights_divide_by_their_own_sum():
    """Weights summing to less than 1 over the batch (0.1 per pixel): the shared-terms
    cross-entropy still divides by that sum, as torch does."""
    weight = [0.1, 0.05, 0.2]
    logits, target = as_tensors()
    shared = WeightedSum({"ce": CrossEntropyLoss(weight=weight)})(logits, target)
    terms = [(weight[y], -math.log(p[y])) for p, y in labelled()]
    expected = sum(w * loss for w, loss in terms) / sum(w for w, _ in terms)
    assert shared.item() == pytest.approx(expected, rel=1e-5)


def test_one_present_class_and_absent_classes_left_out():
    """Every labelled pixel of class 0 (nothing ignored, classes 1 and 2 absent): Dice and
    Tversky are that one class's values, not averaged with the absent ones."""
    logits, _ = as_tensors()
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    p0 = [softmax(row)[0] for row in LOGITS]
    tp, pred, true = sum(p0), sum(p0), 4.0
    dice = (2 * tp + 1) / (pred + true + 1)
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - dice, rel=1e-5)
    tversky = (tp + 1) / (tp + 0.3 * (pred - tp) + 0.7 * (true - tp) + 1)
    assert TverskyLoss()(logits, target).item() == pytest.approx(1 - tversky, rel=1e-5)


def test_focal_on_a_batch_of_images_against_numpy():
    """(2, 3, 4, 5) logits with ignored pixels and class weights: every pixel's own term."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 2
    target = rng.integers(0, 3, (2, 4, 5))
    target[0, 1] = IGNORE
    weight = np.array([0.5, 1.0, 2.0])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    terms = [
        -weight[t] * (1 - probs[b, t, i, j]) ** 2 * np.log(probs[b, t, i, j])
        for (b, i, j), t in np.ndenumerate(target)
        if t != IGNORE
    ]
    value = FocalLoss(weight=weight.tolist())(torch.from_numpy(logits), torch.from_numpy(target))
    assert value.item() == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("loss", [DiceLoss, TverskyLoss], ids=lambda loss: loss.__name__)
def test_a_negative_ignore_index_is_ignored_too(loss):
    """ignore_index=-1 (data.ignore_index=-1; the collate pads masks with it): the same
    value as ignoring 255 on the same pixels. The ignored pixels used to count as class 0."""
    logits, target = as_tensors()
    negative = torch.where(target == IGNORE, -1, target)
    assert loss(ignore_index=-1)(logits, negative).item() == pytest.approx(
        loss()(logits, target).item(), rel=1e-6
    )


@pytest.mark.parametrize("ignore", [255, 250, -1, -2])
def test_dice_with_four_classes_ignores_its_label(ignore):
    """Any ignore_index outside [0, 4), above or below, leaves the class counts alone."""
    rows = [row + [0.3] for row in LOGITS]  # a fourth class, never in the target
    target = [0, 2, 1, ignore]
    value = DiceLoss(ignore_index=ignore)(*as_tensors(rows, target))
    kept = [(softmax(row), y) for row, y in zip(rows, target) if y != ignore]
    dice = [
        (2 * sum(p[c] for p, y in kept if y == c) + 1)
        / (sum(p[c] for p, _ in kept) + sum(y == c for _, y in kept) + 1)
        for c in (0, 1, 2)
    ]
    assert value.item() == pytest.approx(1 - sum(dice) / 3, rel=1e-5)
