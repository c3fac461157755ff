"""Lightning callbacks that show what the network does: in the run folder and in every logger.

``SegImageLogger`` follows a fixed set of validation images. Every N epochs it draws them
as image | ground truth | prediction with a class legend (``segexp.track.pictures``) into
``<run folder>/val/examples/epoch_NNN.png`` (NNN: Lightning's 0-based epoch, as in the
checkpoint names) and sends the same grid to W&B (with interactive mask overlays),
TensorBoard and MLflow, whichever are attached. At the end of fit it writes
``curves.png`` (losses, val mIoU, learning rate per epoch) and ``val/confusion.{png,csv}``,
at the end of test ``test/confusion.{png,csv}`` (``segexp.run.report``, as evaluate.py),
plus W&B's per-class IoU table and confusion matrix and TensorBoard's HPARAMS table.
Rank 0 draws and writes; the other processes only take part in what needs them all.
What each tracker gets, and in which form, is ``segexp.track.publish``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from segexp.data.viz import denormalize
from segexp.errors import UserError
from segexp.track import publish
from segexp.track.pictures import EXAMPLES_SUBDIR as EXAMPLES_DIR

CURVES_FILE = "curves.png"


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class SegImageLogger(pl.Callback):
    """Example images every ``every_n_epochs``; curves and confusion matrices at the end.

    Args:
        num_images: how many validation images to follow (the first ones of the
            validation loader, so the same images every time).
        every_n_epochs: draw them after every n-th validation epoch, and after the last.
        log_tables: W&B's per-class IoU table and confusion matrix at the end of fit
            (last validation) and of test.
        pictures: the PNGs (and CSVs) in the run folder; false: only the loggers get images.
        dirpath: the run folder (default: the trainer's ``default_root_dir``).
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 5,
        log_tables: bool = True,
        pictures: bool = True,
        dirpath: str | None = None,
    ) -> None:
        super().__init__()
        if num_images < 0 or every_n_epochs < 1:
            raise UserError(
                f"callbacks.image_logger: num_images={num_images} must be >= 0 and "
                f"every_n_epochs={every_n_epochs} >= 1"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.log_tables = log_tables
        self.pictures = pictures
        self.dirpath = dirpath
        self._images: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._logged_epoch: int | None = None
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # epoch -> {"train/loss", "val/loss", "val/mIoU", "lr"}: curves.png; kept in checkpoints.
        self.history: dict[int, dict[str, float]] = {}

    # -- where, and for whom ------------------------------------------------------------------
    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def _wanted(self, trainer: pl.Trainer) -> bool:
        """Whether anyone looks at the images: the run folder or an image-taking logger."""
        return self.pictures or publish.takes_images(trainer)

    # -- the fixed images: collected once, from the first validation batches -----------------
    def _have_images(self) -> int:
        return sum(len(batch) for batch in self._images)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0:
            return
        missing = self.num_images - self._have_images()
        if missing > 0 and self._wanted(trainer):
            self._images.append(batch["image"][:missing].detach().cpu())
            self._masks.append(batch["mask"][:missing].detach().cpu())

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self._images and self._due(trainer):
            self._show_examples(trainer, pl_module, trainer.current_epoch)

    def render_examples(self, pl_module: pl.LightningModule, title: str = "") -> np.ndarray:
        """The grid of the followed images with the module's current predictions."""
        from segexp.track.pictures import example_grid

        images = torch.cat(self._images)
        masks = torch.cat(self._masks)
        was_training = pl_module.training
        pl_module.eval()  # BatchNorm must not update its statistics on these images
        try:
            with torch.no_grad():
                logits = pl_module(images.to(pl_module.device))
        finally:
            pl_module.train(was_training)
        predictions = logits.argmax(dim=1).cpu()  # (B, C, H, W) -> (B, H, W)
        hparams = pl_module.hparams
        self._last = (images, masks, predictions)
        rgb = denormalize(images, hparams.get("mean"), hparams.get("std"))
        return example_grid(
            rgb,
            masks.numpy(),
            predictions.numpy(),
            list(pl_module.class_names),
            hparams.get("ignore_index"),
            title=title,
        )

    def _show_examples(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int
    ) -> None:
        from segexp.track.pictures import save_png

        grid = self.render_examples(pl_module, title=f"validation, epoch {epoch}")
        self._logged_epoch = epoch
        path = None
        if self.pictures:
            path = save_png(grid, self.run_dir(trainer) / EXAMPLES_DIR / f"epoch_{epoch:03d}.png")
        publish.publish_examples(trainer, pl_module, grid, epoch, self._last, path)

    # -- the curves: one row per epoch, from the metrics the module logged --------------------
    def _record(self, epoch: int, **values: float | None) -> None:
        row = self.history.setdefault(int(epoch), {})
        row.update({key: value for key, value in values.items() if value is not None})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics  # now holds this validation's figures
        self._record(
            trainer.current_epoch,
            **{"val/loss": _value(metrics, "val/loss"), "val/mIoU": _value(metrics, "val/mIoU")},
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.optimizers:
            self._record(
                trainer.current_epoch, lr=float(trainer.optimizers[0].param_groups[0]["lr"])
            )

    def _record_train_loss(self, trainer: pl.Trainer, epoch: int) -> None:
        # The epoch mean of train/loss reaches callback_metrics after on_train_epoch_end.
        if epoch >= 0:
            self._record(
                epoch, **{"train/loss": _value(trainer.callback_metrics, "train/loss_epoch")}
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch - 1 in self.history:
            self._record_train_loss(trainer, trainer.current_epoch - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {int(e): dict(row) for e, row in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(e): dict(row) for e, row in state_dict.get("history", {}).items()}

    # -- the end of fit and test --------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.current_epoch - 1  # fit has already moved past the last epoch
        self._record_train_loss(trainer, last_epoch)
        if not trainer.is_global_zero:
            return
        if self._images and self._logged_epoch != last_epoch and last_epoch >= 0:
            # Training stopped before max_epochs (early stopping): show where it ended.
            self._show_examples(trainer, pl_module, last_epoch)
        run_dir = self.run_dir(trainer)
        files = []
        if self.pictures:
            from segexp.track.pictures import plot_curves

            files.append(plot_curves(self.history, run_dir / CURVES_FILE))
        files += self._confusion(trainer, pl_module, "val")
        publish.mlflow_files(trainer, [f for f in files if f is not None], run_dir)
        publish.tensorboard_run_hparams(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            files = self._confusion(trainer, pl_module, "test")
            publish.mlflow_files(trainer, files, self.run_dir(trainer))

    def _confusion(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> list[Path]:
        """``<stage>/confusion.{csv,png}`` and W&B's tables, from the stage's last matrix."""
        confmat = getattr(pl_module, "last_confmat", {}).get(stage)
        if confmat is None:
            return []
        wandb_logger = publish.find_wandb_logger(trainer)
        if self.log_tables and wandb_logger is not None:
            publish.wandb_tables(trainer, pl_module, wandb_logger, confmat, stage)
        if not self.pictures:
            return []
        from segexp.run.report import plot_confusion, write_confusion_csv

        names = list(pl_module.class_names)
        folder = self.run_dir(trainer) / stage
        matrix = confmat.cpu().numpy()
        if stage == "val":
            title = f"val, last epoch ({trainer.current_epoch - 1})"
        else:
            title = (
                f"test: {Path(trainer.ckpt_path).name if trainer.ckpt_path else 'final weights'}"
            )
        return [
            write_confusion_csv(matrix, names, folder / "confusion.csv"),
            plot_confusion(matrix, names, folder / "confusion.png", title=title),
        ]
