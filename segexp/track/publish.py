"""What ``SegImageLogger`` sends to the trackers a trainer has, each in its own form.

W&B: the example images with interactive mask overlays, the per-class IoU table and the
confusion matrix. TensorBoard: the example grid and the HPARAMS table. MLflow: the run
folder's pictures as artifacts at the same paths. A tracker that is not attached is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from segexp.data.viz import denormalize
from segexp.model.metrics import SUMMARY_KEYS, confusion_scores
from segexp.track.pictures import EXAMPLES_SUBDIR as EXAMPLES_DIR

# The loggers that take the example images (the run folder's PNGs aside).
IMAGE_LOGGERS = (WandbLogger, TensorBoardLogger, MLFlowLogger)


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def loggers_of(trainer: pl.Trainer, kind: type) -> list[Any]:
    return [lg for lg in trainer.loggers if isinstance(lg, kind)]


def takes_images(trainer: pl.Trainer) -> bool:
    """Whether one of the trainer's loggers takes the example images."""
    return any(isinstance(lg, IMAGE_LOGGERS) for lg in trainer.loggers)


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


def publish_examples(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    grid: np.ndarray,
    epoch: int,
    shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    path: Path | None,
) -> None:
    """The example grid of ``epoch`` to every attached tracker: W&B (with the ``shown``
    images, masks and predictions as overlays), TensorBoard, and MLflow (the run folder's
    PNG at ``path``, or the grid itself when no PNG was written)."""
    step = trainer.global_step
    wandb_logger = find_wandb_logger(trainer)
    if wandb_logger is not None:
        wandb_images(trainer, pl_module, wandb_logger, grid, epoch, shown)
    for logger in loggers_of(trainer, TensorBoardLogger):
        logger.experiment.add_image("val/examples", grid, step, dataformats="HWC")
    for logger in loggers_of(trainer, MLFlowLogger):
        if path is not None:
            logger.experiment.log_artifact(logger.run_id, str(path), str(EXAMPLES_DIR))
        else:
            logger.experiment.log_image(
                logger.run_id, grid, artifact_file=f"{EXAMPLES_DIR}/epoch_{epoch:03d}.png"
            )


def wandb_images(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    logger: WandbLogger,
    grid: np.ndarray,
    epoch: int,
    shown: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    import wandb

    images, masks, predictions = shown
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
            caption=f"val image {index}, epoch {epoch}",
        )
        for index in range(len(rgb))
    ]
    logger.experiment.log(
        {
            "val/examples": entries,  # interactive: masks toggled and classes named on hover
            "val/examples_grid": wandb.Image(grid, caption=f"epoch {epoch}"),  # = the PNG
            "trainer/global_step": trainer.global_step,
        }
    )


def wandb_tables(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    logger: WandbLogger,
    confmat: torch.Tensor,
    stage: str,
) -> None:
    import wandb

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


def mlflow_files(trainer: pl.Trainer, files: Sequence[Path], root: Path) -> None:
    """MLflow artifacts at the same paths as in the run folder ``root`` (``val/confusion.png``)."""
    for logger in loggers_of(trainer, MLFlowLogger):
        for path in files:
            try:
                folder = str(path.parent.relative_to(root))
            except ValueError:
                folder = None
            logger.experiment.log_artifact(
                logger.run_id, str(path), None if folder in (None, ".") else folder
            )


def tensorboard_run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """TensorBoard's HPARAMS table: the run's config and its headline metrics, val and test."""
    loggers = loggers_of(trainer, TensorBoardLogger)
    if not loggers:
        return
    from segexp.track.loggers import tensorboard_hparams

    params = getattr(pl_module, "run_config", None) or dict(pl_module.hparams)
    names = [f"{stage}/{key}" for stage in ("val", "test") for key in (*SUMMARY_KEYS, "loss")]
    names.append("train/loss_epoch")
    for logger in loggers:
        tensorboard_hparams(logger, params, names)
