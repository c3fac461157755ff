"""Property tests of segexp.model.metrics: any confusion matrix, any labelling.

Each property draws its cases with hypothesis (absent classes, empty matrices, ignored
and out-of-range target pixels, any permutation of the class ids) and compares with the
textbook definitions written here class by class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segexp.model.metrics import SUMMARY_KEYS, EvalState, confusion_scores, finite_or_none

# Many zeros: classes absent from the target, the prediction or both, and empty matrices.
COUNTS = st.one_of(st.just(0), st.integers(0, 40))


@st.composite
def confusion_matrices(draw, max_classes: int = 6) -> np.ndarray:
    classes = draw(st.integers(1, max_classes))
    return draw(hnp.arrays(np.int64, (classes, classes), elements=COUNTS))


def definitions(confmat: np.ndarray) -> dict:
    """Per-class IoU, recall and Dice from rows (target) and columns (prediction), and the
    means segexp documents; NaN where a score has no pixels to be computed from."""
    total = int(confmat.sum())
    iou, acc, dice, fw_iou = [], [], [], 0.0
    for c in range(len(confmat)):
        tp = int(confmat[c, c])
        fn = int(confmat[c].sum()) - tp  # class c in the target, predicted as another
        fp = int(confmat[:, c].sum()) - tp  # predicted c, another class in the target
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        acc.append(tp / (tp + fn) if tp + fn else math.nan)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan)
        if tp + fn:
            fw_iou += (tp + fn) / total * iou[-1]

    def mean(values):
        present = [v for v in values if not math.isnan(v)]
        return sum(present) / len(present) if present else math.nan

    return {
        "iou": iou,
        "acc": acc,
        "dice": dice,
        "mIoU": mean(iou),
        "mean_acc": mean(acc),
        "mean_dice": mean(dice),
        "pixel_acc": np.trace(confmat) / total if total else math.nan,
        "fw_iou": fw_iou if total else math.nan,
    }


def close(a, b) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), equal_nan=True))


@settings(max_examples=150)
@given(confusion_matrices())
def test_scores_of_any_confusion_matrix_are_the_definitions(confmat):
    scores = confusion_scores(torch.from_numpy(confmat))
    expected = definitions(confmat)
    for key in ("iou", "acc", "dice"):
        assert close(scores[key].numpy(), expected[key]), key
    for key in SUMMARY_KEYS:
        assert close(float(scores[key]), expected[key]), (key, float(scores[key]), expected[key])


@settings(max_examples=100)
@given(confusion_matrices(), st.data())
def test_renumbering_the_classes_renumbers_the_per_class_scores(confmat, data):
    """Class ids are names: giving the classes other ids moves each per-class score with its
    class and changes no mean."""
    order = data.draw(st.permutations(range(len(confmat))))
    renumbered = confmat[np.ix_(order, order)]  # new class i is old class order[i]
    before = confusion_scores(torch.from_numpy(confmat))
    after = confusion_scores(torch.from_numpy(renumbered))
    for key in ("iou", "acc", "dice"):
        assert close(after[key].numpy(), before[key].numpy()[order]), key
    for key in SUMMARY_KEYS:
        assert close(float(after[key]), float(before[key])), key


@st.composite
def labelled_batches(draw):
    """(num_classes, ignore_index, [(preds, target)]) with target pixels that are ignored,
    out of range (negative, >= num_classes) or any class, in one or more batches."""
    classes = draw(st.integers(1, 5))
    ignore = draw(st.sampled_from([255, None, *range(classes)]))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)))
    labels = st.one_of(st.integers(0, classes - 1), st.sampled_from([255, classes, -1, 300]))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        preds = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, classes - 1)))
        target = draw(hnp.arrays(np.int64, shape, elements=labels))
        batches.append((preds, target))
    return classes, ignore, batches


@settings(max_examples=120)
@given(labelled_batches())
def test_eval_state_counts_every_labelled_pixel_once(case):
    """The accumulated matrix counts, over all batches, each target pixel in 0..C-1 other
    than ignore_index at (target, prediction); every other pixel is dropped."""
    classes, ignore, batches = case
    state = EvalState(classes, ignore_index=ignore)
    expected = np.zeros((classes, classes), np.int64)
    for preds, target in batches:
        state.update(torch.from_numpy(preds), torch.from_numpy(target))
        for p, t in zip(preds.ravel(), target.ravel()):
            if 0 <= t < classes and t != ignore:
                expected[t, p] += 1
    np.testing.assert_array_equal(state.compute().numpy(), expected)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0, 10)), min_size=1, max_size=5))
def test_eval_state_mean_loss_weighs_batches_by_their_size(batches):
    state = EvalState(2)
    for size, loss in batches:
        preds = torch.zeros(size, 2, 2, dtype=torch.long)
        state.update(preds, preds, torch.tensor(loss))
    state.compute()
    expected = sum(size * loss for size, loss in batches) / sum(size for size, _ in batches)
    assert math.isclose(float(state.mean_loss), expected, rel_tol=1e-6, abs_tol=1e-6)


@given(st.one_of(st.none(), st.floats(allow_nan=True), st.integers()))
def test_an_undefined_score_is_written_as_null(value):
    """metrics.json has no NaN: a NaN score becomes None (null); every other value is kept."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        assert finite_or_none(value) is None
    else:
        assert finite_or_none(value) == value
