"""segexp.track.callbacks: SegImageLogger (example images every N epochs, curves and confusion matrices at the end)."""

from __future__ import annotations

from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch

from segexp.data.viz import denormalize
from segexp.track.callbacks import SegImageLogger


def test_denormalize_undoes_the_pipeline() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = A.Normalize(mean=mean, std=std)(image=image)[
        "image"
    ]  # what the data pipeline does
    tensor = torch.from_numpy(normalised).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
    np.testing.assert_array_equal(denormalize(tensor, mean, std)[0], image)


def test_due_every_n_epochs_and_last() -> None:
    logger = SegImageLogger(num_images=2, every_n_epochs=3)
    due = [logger._due(SimpleNamespace(current_epoch=e, max_epochs=7)) for e in range(7)]
    assert due == [False, False, True, False, False, True, True]  # epochs 3, 6 and the last (7)
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        SegImageLogger(every_n_epochs=0)


def test_collects_images_for_the_run_folder_without_any_logger() -> None:
    """logger=csv (or none): the pictures in the run folder still need the images."""
    logger = SegImageLogger(num_images=3)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[])
    batch = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    for index in range(3):
        logger.on_validation_batch_end(trainer, None, None, batch, index)
    assert logger._have_images() == 3  # 2 + 1, then no more


def test_pictures_off_and_no_image_logger_collects_nothing() -> None:
    """callbacks.image_logger.pictures=false with logger=csv: nothing to show, nothing kept."""
    logger = SegImageLogger(num_images=4, pictures=False)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[object()])
    batch = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    logger.on_validation_batch_end(trainer, None, None, batch, 0)
    assert logger._images == []
    rank1 = SegImageLogger(num_images=4)
    rank1.on_validation_batch_end(
        SimpleNamespace(sanity_checking=False, is_global_zero=False, loggers=[]),
        None,
        None,
        batch,
        0,
    )
    assert rank1._images == []  # rank 0 only


def test_fit_end_shows_examples_when_stopped_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Early stopping after epoch 4 of every-5: the images of where training ended are still drawn."""
    calls = []
    callback = SegImageLogger(num_images=1, every_n_epochs=5, log_tables=False, pictures=False)
    monkeypatch.setattr(
        callback, "_show_examples", lambda trainer, module, epoch: calls.append(epoch)
    )
    callback._images = [torch.zeros(1, 3, 8, 8)]
    module = torch.nn.Linear(1, 1)
    trainer = SimpleNamespace(
        current_epoch=4,
        is_global_zero=True,
        callback_metrics={},
        loggers=[],
        default_root_dir=tmp_path,
    )
    callback.on_fit_end(trainer, module)
    assert calls == [3]
    callback._logged_epoch = 3  # already drawn after the last epoch (index 3): not again
    callback.on_fit_end(trainer, module)
    assert calls == [3]


def test_render_examples_in_eval_mode_and_restores_training() -> None:
    class Module(torch.nn.Module):
        class_names = ["bg", "fg"]
        hparams = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "ignore_index": 255}
        device = torch.device("cpu")

        def __init__(self) -> None:
            super().__init__()
            self.modes: list[bool] = []

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.modes.append(self.training)
            logits = torch.zeros(len(images), 2, *images.shape[2:])
            logits[:, 1, :, 4:] = 1.0  # right half: class 1
            return logits

    module = Module().train()
    callback = SegImageLogger(num_images=2)
    callback._images = [torch.zeros(2, 3, 8, 16)]
    callback._masks = [torch.zeros(2, 8, 16, dtype=torch.long)]
    grid = callback.render_examples(module)
    assert module.modes == [False] and module.training
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert callback._last[2][:, :, 4:].eq(1).all() and callback._last[2][:, :, :4].eq(0).all()


def test_history_of_curves_survives_a_checkpoint(tmp_path) -> None:
    """The per-epoch values behind curves.png are in the checkpoint: a resumed run keeps them."""
    callback = SegImageLogger()
    callback._record(0, **{"val/mIoU": 0.25, "val/loss": 1.5, "lr": 1e-3})
    callback._record(0, **{"train/loss": 2.0, "val/loss": None})  # None: not recorded
    callback._record(1, **{"val/mIoU": 0.5})
    path = tmp_path / "state.pt"
    torch.save({"callbacks": {"SegImageLogger": callback.state_dict()}}, path)
    restored = SegImageLogger()
    restored.load_state_dict(torch.load(path, weights_only=True)["callbacks"]["SegImageLogger"])
    assert restored.history == {
        0: {"val/mIoU": 0.25, "val/loss": 1.5, "lr": 1e-3, "train/loss": 2.0},
        1: {"val/mIoU": 0.5},
    }
    restored.load_state_dict({})  # a checkpoint from before: no history, no error
    assert restored.history == {}


@pytest.mark.slow
def test_images_logged_every_n_epochs_in_a_real_run(compose_cfg) -> None:
    """3 epochs, every 2: images after epochs 2 and 3 (the last), each with GT and prediction masks."""
    from pathlib import Path

    from segexp.run.lifecycle import train
    from segexp.track.loggers import finish_wandb, offline_runs, read_offline_run

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
    grids = [row for row in run["history"] if "val/examples_grid._type" in row]
    assert len(grids) == 2  # the same grid as val/examples/epoch_NNN.png in the run folder
    assert sorted(p.name for p in (Path(cfg.paths.output_dir) / "val" / "examples").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
    ]
    assert run["summary"]["val/per_class_iou"]["nrows"] == cfg.data.num_classes
    assert "val/confusion_matrix_table" in run["summary"]
