"""segexp.track.callbacks: the W&B image logger (masks every N epochs, IoU table + confusion matrix at the end)."""

from __future__ import annotations

from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch

from segexp.track.callbacks import SegImageLogger, class_labels, denormalize, per_class_rows


def test_denormalize_undoes_the_pipeline() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = A.Normalize(mean=mean, std=std)(image=image)[
        "image"
    ]  # what the data pipeline does
    tensor = torch.from_numpy(normalised).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
    np.testing.assert_array_equal(denormalize(tensor, mean, std)[0], image)


def test_per_class_rows_from_confusion_matrix() -> None:
    # rows: target, columns: prediction. class 2 never occurs: no IoU, no accuracy.
    confmat = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    rows = per_class_rows(confmat, ["bg", "fg", "never"])
    assert rows[0] == ["bg", pytest.approx(8 / 11), pytest.approx(8 / 10), 10, 9]
    assert rows[1] == ["fg", pytest.approx(3 / 6), pytest.approx(3 / 4), 4, 5]
    assert rows[2] == ["never", None, None, 0, 0]


def test_class_labels_name_ignore() -> None:
    assert class_labels(["bg", "cat"], 255) == {0: "bg", 1: "cat", 255: "ignore"}
    assert class_labels(["bg", "cat"], None) == {0: "bg", 1: "cat"}


def test_due_every_n_epochs_and_last() -> None:
    logger = SegImageLogger(num_images=2, every_n_epochs=3)
    due = [logger._due(SimpleNamespace(current_epoch=e, max_epochs=7)) for e in range(7)]
    assert due == [False, False, True, False, False, True, True]  # epochs 3, 6 and the last (7)
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        SegImageLogger(every_n_epochs=0)


def test_without_wandb_collects_nothing() -> None:
    """With logger=csv the callback must cost nothing: no images kept."""
    logger = SegImageLogger(num_images=4)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[])
    batch = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    logger.on_validation_batch_end(trainer, None, None, batch, 0)
    assert logger._images == []


def test_fit_end_logs_images_when_stopped_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Early stopping after epoch 4 of every-5: the images of where training ended are still logged."""
    import segexp.track.callbacks

    calls = []
    callback = SegImageLogger(num_images=1, every_n_epochs=5, log_tables=False)
    monkeypatch.setattr(segexp.track.callbacks, "find_wandb_logger", lambda trainer: "wandb")
    monkeypatch.setattr(
        callback, "_log_images", lambda trainer, module, logger: calls.append(module.training)
    )
    callback._images = [torch.zeros(1, 3, 8, 8)]
    module = torch.nn.Linear(1, 1).train()
    callback.on_fit_end(SimpleNamespace(current_epoch=4, is_global_zero=True), module)
    assert calls == [False] and module.training  # logged in eval mode, train mode restored
    callback._logged_epoch = 3  # already logged after the last epoch (index 3): not again
    callback.on_fit_end(SimpleNamespace(current_epoch=4, is_global_zero=True), module)
    assert calls == [False]


@pytest.mark.slow
def test_images_logged_every_n_epochs_in_a_real_run(compose_cfg) -> None:
    """3 epochs, every 2: images after epochs 2 and 3 (the last), each with GT and prediction masks."""
    from pathlib import Path

    from segexp.track.loggers import finish_wandb, offline_runs, read_offline_run
    from train import train

    cfg = compose_cfg(
        [
            "logger=wandb",
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=1",
            "callbacks.image_logger.every_n_epochs=2",
            "callbacks.image_logger.num_images=5",  # more than one val batch (batch_size=4)
            "test=false",
        ]
    )
    try:
        train(cfg)
    finally:
        finish_wandb()
    (offline,) = offline_runs(Path(cfg.paths.output_dir))
    run = read_offline_run(offline)
    logged = [row for row in run["history"] if "val/examples._type" in row]
    assert len(logged) == 2
    for row in logged:
        assert row["val/examples.count"] == 5
        assert all(set(m) == {"ground_truth", "prediction"} for m in row["val/examples.all_masks"])
    assert run["summary"]["val/per_class_iou"]["nrows"] == cfg.data.num_classes
    assert "val/confusion_matrix_table" in run["summary"]
