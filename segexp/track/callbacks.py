"""Lightning callbacks that show what the network does, in W&B.

``SegImageLogger`` logs a fixed set of validation images with their ground-truth
and predicted masks (W&B mask overlays, class names on hover) every N epochs,
then a per-class IoU table and the confusion matrix at the end of fit and test.
It does nothing (and costs nothing) when no W&B logger is attached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from segexp.errors import UserError
from segexp.model.metrics import confusion_scores


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) normalised float -> (B, H, W, 3) uint8 RGB, undoing the pipeline's normalisation.

    ``mean``/``std`` are in [0, 1] units (the pipeline scales pixels by 1/255 first).
    """
    mean_t = torch.as_tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    rgb = (images.float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().byte().permute(0, 2, 3, 1).numpy()


def class_labels(class_names: Sequence[str], ignore_index: int | None) -> dict[int, str]:
    labels = dict(enumerate(class_names))
    if ignore_index is not None and ignore_index not in labels:
        labels[int(ignore_index)] = "ignore"
    return labels


def per_class_rows(confmat: torch.Tensor, class_names: Sequence[str]) -> list[list[Any]]:
    """[class, IoU, accuracy, target pixels, predicted pixels] per class; None where undefined."""
    scores = confusion_scores(confmat)
    target = confmat.sum(dim=1).tolist()
    predicted = confmat.sum(dim=0).tolist()
    rows = []
    for index, name in enumerate(class_names):
        iou, acc = float(scores["iou"][index]), float(scores["acc"][index])
        rows.append(
            [
                name,
                None if np.isnan(iou) else iou,
                None if np.isnan(acc) else acc,
                int(target[index]),
                int(predicted[index]),
            ]
        )
    return rows


class SegImageLogger(pl.Callback):
    """Validation images with GT and predicted masks every ``every_n_epochs``; IoU table + confusion matrix at the end.

    Args:
        num_images: how many validation images to follow (the first ones of the
            validation loader, so the same images every time).
        every_n_epochs: log the images after every n-th validation epoch, and after the last.
        log_tables: log the per-class IoU table and the confusion matrix at the
            end of fit (last validation) and of test.
    """

    def __init__(
        self, num_images: int = 4, every_n_epochs: int = 5, log_tables: bool = True
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
        self._images: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._last_val_confmat: torch.Tensor | None = None
        self._logged_epoch: int | None = None

    # -- the fixed images: collected once, from the first validation batches ---------------
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
        if missing > 0 and find_wandb_logger(trainer) is not None:
            self._images.append(batch["image"][:missing].detach().cpu())
            self._masks.append(batch["mask"][:missing].detach().cpu())

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = find_wandb_logger(trainer)  # the same on every rank (rank > 0 has a dummy run)
        if trainer.sanity_checking or logger is None:
            return
        if self.log_tables and "val" in getattr(pl_module, "confmats", {}):
            # Callbacks run before the module's hook, which resets the matrix; every rank
            # computes (it syncs under DDP), only rank 0 logs.
            self._last_val_confmat = pl_module.confmats["val"].compute().detach().cpu()
        if not trainer.is_global_zero or not self._images or not self._due(trainer):
            return
        self._log_images(trainer, pl_module, logger)
        self._logged_epoch = trainer.current_epoch

    def _log_images(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, logger: WandbLogger
    ) -> None:
        import wandb

        images = torch.cat(self._images)
        masks = torch.cat(self._masks)
        with torch.no_grad():
            logits = pl_module(images.to(pl_module.device))
        predictions = logits.argmax(dim=1).cpu()  # (B, C, H, W) -> (B, H, W)
        hparams = pl_module.hparams
        labels = class_labels(pl_module.class_names, hparams.get("ignore_index"))
        rgb = denormalize(images, hparams.get("mean"), hparams.get("std"))
        entries = [
            wandb.Image(
                rgb[index],
                masks={
                    "ground_truth": {
                        "mask_data": masks[index].numpy().astype(np.uint8),
                        "class_labels": labels,
                    },
                    "prediction": {
                        "mask_data": predictions[index].numpy().astype(np.uint8),
                        "class_labels": labels,
                    },
                },
                caption=f"val image {index}, epoch {trainer.current_epoch}",
            )
            for index in range(len(rgb))
        ]
        logger.experiment.log({"val/examples": entries, "trainer/global_step": trainer.global_step})

    # -- tables at the end --------------------------------------------------------------------
    def _log_tables(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, confmat: torch.Tensor, stage: str
    ) -> None:
        import wandb

        logger = find_wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        names = list(pl_module.class_names)
        iou_table = wandb.Table(
            columns=["class", "IoU", "accuracy", "target_pixels", "predicted_pixels"],
            data=per_class_rows(confmat, names),
        )
        counts = confmat.long().tolist()  # rows: target, columns: prediction
        cells = [
            [names[t], names[p], counts[t][p]] for t in range(len(names)) for p in range(len(names))
        ]
        confusion = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": f"{stage} confusion matrix (pixels)"},
        )
        logger.experiment.log(
            {
                f"{stage}/per_class_iou": iou_table,
                f"{stage}/confusion_matrix": confusion,
                "trainer/global_step": trainer.global_step,
            }
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = find_wandb_logger(trainer)
        last_epoch = trainer.current_epoch - 1  # fit has already moved past the last epoch
        if logger and trainer.is_global_zero and self._images and self._logged_epoch != last_epoch:
            # Training stopped before max_epochs (early stopping): show where it ended.
            was_training = pl_module.training
            pl_module.eval()  # BatchNorm must not update its statistics on these images
            self._log_images(trainer, pl_module, logger)
            pl_module.train(was_training)
        if self.log_tables and self._last_val_confmat is not None:
            self._log_tables(trainer, pl_module, self._last_val_confmat, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if find_wandb_logger(trainer) is None:
            return
        if self.log_tables and "test" in getattr(pl_module, "confmats", {}):
            confmat = pl_module.confmats["test"].compute().detach().cpu()
            self._log_tables(trainer, pl_module, confmat, "test")
