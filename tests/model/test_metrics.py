"""segexp.model.metrics against an independent numpy computation and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from segexp.model.metrics import confusion_scores, flat_scores

IGNORE = 255


def numpy_reference(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Textbook definitions, computed pixel by pixel without a confusion-matrix library."""
    valid = target != IGNORE
    pred, target = pred[valid], target[valid]
    ious, accs, dices, fw_iou = [], [], [], 0.0
    for c in range(num_classes):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        accs.append(tp / (tp + fn) if tp + fn else np.nan)
        dices.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
        if tp + fn:
            fw_iou += (tp + fn) / target.size * ious[-1]
    return {
        "iou": np.array(ious),
        "acc": np.array(accs),
        "dice": np.array(dices),
        "mIoU": np.nanmean(ious),
        "mean_acc": np.nanmean(accs),
        "mean_dice": np.nanmean(dices),
        "fw_iou": fw_iou,
        "pixel_acc": np.mean(pred == target),
    }


def random_case(seed: int, num_classes: int = 6, absent_target=(4,), absent_both=(5,)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=(3, 17, 23))
    pred = rng.integers(0, num_classes, size=(3, 17, 23))
    for c in absent_target:  # predicted somewhere, never in the target
        target[target == c] = 0
    for c in absent_both:
        target[target == c] = 1
        pred[pred == c] = 2
    target[rng.random(target.shape) < 0.2] = IGNORE
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_numpy_reference(seed):
    num_classes = 6
    pred, target = random_case(seed, num_classes)
    confmat = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE)
    confmat.update(torch.from_numpy(pred), torch.from_numpy(target))
    scores = confusion_scores(confmat.compute())
    ref = numpy_reference(pred, target, num_classes)

    np.testing.assert_allclose(scores["iou"].numpy(), ref["iou"], equal_nan=True)
    np.testing.assert_allclose(scores["acc"].numpy(), ref["acc"], equal_nan=True)
    np.testing.assert_allclose(scores["dice"].numpy(), ref["dice"], equal_nan=True)
    for key in ("mIoU", "mean_acc", "pixel_acc", "mean_dice", "fw_iou"):
        assert float(scores[key]) == pytest.approx(ref[key])
    # A class absent from prediction and target has no IoU; one predicted but absent has IoU 0.
    assert np.isnan(scores["iou"][5])
    assert scores["iou"][4] == 0
    assert np.isnan(scores["acc"][4]) and np.isnan(scores["dice"][5]) and scores["dice"][4] == 0


def test_miou_equals_torchmetrics_macro_jaccard():
    pred, target = random_case(7)
    confmat = MulticlassConfusionMatrix(6, ignore_index=IGNORE)
    confmat.update(torch.from_numpy(pred), torch.from_numpy(target))
    jaccard = MulticlassJaccardIndex(6, average="macro", ignore_index=IGNORE)
    jaccard.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert float(confusion_scores(confmat.compute())["mIoU"]) == pytest.approx(
        float(jaccard.compute())
    )


def test_flat_scores_use_design_names():
    pred, target = random_case(3)
    confmat = MulticlassConfusionMatrix(6, ignore_index=IGNORE)
    confmat.update(torch.from_numpy(pred), torch.from_numpy(target))
    names = ["bg", "a", "b", "c", "d", "e"]
    flat = flat_scores(confmat.compute(), names, "val")
    assert {"val/mIoU", "val/pixel_acc", "val/mean_acc", "val/mean_dice", "val/fw_iou"} <= set(flat)
    for key in ("iou", "acc", "dice"):
        assert [k for k in flat if k.startswith(f"val/{key}/")] == [f"val/{key}/{n}" for n in names]
    ref = numpy_reference(pred, target, 6)
    assert flat["val/acc/b"] == pytest.approx(ref["acc"][2])
    assert flat["val/fw_iou"] == pytest.approx(ref["fw_iou"])


def test_dice_and_fw_iou_on_a_hand_computed_case():
    # target: 3 px of class 0, 1 px of class 1; prediction gets one class-0 pixel wrong.
    target = torch.tensor([[0, 0, 0, 1]])
    pred = torch.tensor([[0, 0, 1, 1]])
    confmat = MulticlassConfusionMatrix(3, ignore_index=IGNORE)
    confmat.update(pred, target)
    scores = confusion_scores(confmat.compute())
    # IoU: class 0 = 2/3, class 1 = 1/2; Dice: 4/5 and 2/3; class 2 absent everywhere.
    assert float(scores["mean_dice"]) == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert float(scores["fw_iou"]) == pytest.approx(0.75 * 2 / 3 + 0.25 * 0.5)
    assert float(scores["mIoU"]) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_eval_state_matches_numpy_and_fast_argmax_matches_torch():
    """EvalState's bincount (ignored and out-of-range targets dropped) and argmax_classes
    against numpy and torch.argmax, ties included (the lower class wins, as in argmax)."""
    from segexp.model.metrics import EvalState, argmax_classes

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 17, 9)
    logits[:, 3] = logits[:, 1]  # exact ties between classes 1 and 3
    assert torch.equal(argmax_classes(logits), logits.argmax(dim=1))
    preds = logits.argmax(dim=1)
    target = torch.randint(0, 5, (3, 17, 9))
    target[0, :4] = 255
    target[1, :2] = 7  # not a class: dropped like ignore_index
    state = EvalState(5, ignore_index=255)
    state.update(preds[:2], target[:2], torch.tensor(1.0))
    state.update(preds[2:], target[2:], torch.tensor(4.0))
    t, p = target.numpy().ravel(), preds.numpy().ravel()
    keep = t < 5
    expected = np.zeros((5, 5), dtype=np.int64)
    np.add.at(expected, (t[keep], p[keep]), 1)
    np.testing.assert_array_equal(state.compute().numpy(), expected)
    assert float(state.mean_loss) == pytest.approx(
        (1.0 * 2 + 4.0 * 1) / 3
    )  # weighted by batch size


def test_eval_state_drops_an_ignore_index_that_is_also_a_class_id():
    """ignore_index inside [0, C) (e.g. 0 as 'unlabelled') is dropped, as torchmetrics does."""
    from segexp.model.metrics import EvalState

    target = torch.tensor([[0, 1, 2, 0]])
    preds = torch.tensor([[1, 1, 2, 2]])
    state = EvalState(3, ignore_index=0)
    state.update(preds, target)
    reference = MulticlassConfusionMatrix(3, ignore_index=0)
    reference.update(preds, target)
    assert torch.equal(state.compute(), reference.compute())
    assert int(state.compute().sum()) == 2


def test_epoch_end_logs_every_figure_once_with_one_self_log(compose_cfg, monkeypatch):
    """All figures reach callback_metrics and the loggers once per epoch; only the headline
    goes through Lightning's per-call self.log (the cost figure 3 of docs/benchmarks.md measures)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers.logger import Logger
    from torch.utils.data import DataLoader

    from segexp.model.module import build_module

    class Recorder(Logger):
        name, version = "recorder", 0
        rows: list = []

        @property
        def experiment(self):
            return None

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append((dict(metrics), step))

    module = build_module(compose_cfg(["data.num_classes=3"]))
    calls = []
    original = module.log
    monkeypatch.setattr(
        module, "log", lambda name, *a, **k: (calls.append(name), original(name, *a, **k))
    )
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(2, 3, 32, 32, generator=generator),
         "mask": torch.randint(0, 3, (2, 32, 32), generator=generator)}
        for _ in range(3)
    ]  # fmt: skip
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", logger=recorder, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    expected = {"val/loss", "val/mIoU", "val/pixel_acc", "val/mean_acc", "val/mean_dice"}
    expected |= {"val/fw_iou"} | {
        f"val/{k}/class_{i}" for k in ("iou", "acc", "dice") for i in range(3)
    }
    assert expected <= set(trainer.callback_metrics)
    assert calls == ["val/mIoU"]
    logged = {name for row, _ in recorder.rows for name in row}
    assert expected <= logged
    confmat = module.last_confmat["val"]
    assert float(trainer.callback_metrics["val/pixel_acc"]) == pytest.approx(
        float(confmat.diagonal().sum() / confmat.sum()), abs=1e-6
    )


def test_one_wrong_pixel_scores_zero_everywhere_it_is_defined():
    """One pixel of class 0 predicted as 1 (each class counted once, target + prediction = 1):
    every score is 0 where defined; class 1's recall is undefined (absent from the target)."""
    scores = confusion_scores(torch.tensor([[0, 1], [0, 0]]))
    for key in ("mIoU", "pixel_acc", "mean_acc", "mean_dice", "fw_iou"):
        assert float(scores[key]) == 0.0, key
    assert scores["iou"].tolist() == [0.0, 0.0] and scores["dice"].tolist() == [0.0, 0.0]
    assert scores["acc"][0] == 0.0 and scores["acc"][1].isnan()


def numpy_confmat(preds, target, num_classes: int) -> np.ndarray:
    """Rows target, columns prediction; targets outside [0, num_classes) (ignored) dropped."""
    t, p = np.asarray(target).ravel(), np.asarray(preds).ravel()
    keep = (t >= 0) & (t < num_classes)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (t[keep], p[keep]), 1)
    return counts


def test_eval_states_of_two_processes_combine_by_summing():
    """What DDP does at compute (merge_state here): confusion matrices, losses and sample
    counts add up, so the combined state equals one that saw every batch."""
    from segexp.model.metrics import EvalState

    rng = np.random.default_rng(3)
    preds, target = rng.integers(0, 4, (2, 3, 5, 6)), rng.integers(0, 4, (2, 3, 5, 6))
    states = [EvalState(4), EvalState(4)]
    for state, p, t, loss in zip(states, preds, target, [1.0, 3.0]):
        state.update(torch.from_numpy(p), torch.from_numpy(t), torch.tensor(loss))
    states[0].merge_state(states[1])
    np.testing.assert_array_equal(states[0].compute().numpy(), numpy_confmat(preds, target, 4))
    assert float(states[0].mean_loss) == pytest.approx((1.0 * 3 + 3.0 * 3) / 6)


def test_eval_state_counts_exactly():
    """Integer counts (a float32 matrix stops counting at 2**24 pixels, a few 4K images) and a
    float64 loss sum: a batch loss of 2**24 plus two of 1 keeps the two."""
    from segexp.model.metrics import EvalState

    state = EvalState(2)
    for loss in (2.0**24, 1.0, 1.0):
        state.update(
            torch.zeros(1, 1, 1, dtype=torch.long), torch.ones(1, 1, 1), torch.tensor(loss)
        )
    assert state.compute().dtype == torch.int64
    assert state.compute().tolist() == [[0, 0], [3, 0]]
    assert float(state.mean_loss) == (2**24 + 2) / 3  # 5592406, exact in float32


def test_eval_state_drops_every_target_outside_the_classes():
    """Negative labels (an int16 mask) and labels >= C are dropped; the default ignore_index
    255 is dropped even when it is a class id of a 300-class model."""
    from segexp.model.metrics import EvalState

    target = torch.tensor([[-5, -2, -1, 0, 1, 2, 3, 7, 255, 1]])
    preds = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
    state = EvalState(3, ignore_index=None)
    state.update(preds, target)
    np.testing.assert_array_equal(state.compute().numpy(), numpy_confmat(preds, target, 3))
    many = EvalState(300)
    many.update(torch.tensor([[0, 299, 7]]), torch.tensor([[255, 299, 254]]))
    confmat = many.compute()
    assert int(confmat.sum()) == 2 and confmat[299, 299] == 1 and confmat[254, 7] == 1
