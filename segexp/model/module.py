"""SegModule: the LightningModule that trains and evaluates one segmentation network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from segexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segexp.model.metrics import EvalState, argmax_classes, flat_scores
from segexp.model.networks import PadToMultiple


class SegModule(pl.LightningModule):
    """Network + loss + optimizer + schedule + metrics, each built from its config group.

    The configs arrive as plain dicts and are saved as hyper-parameters, so a
    checkpoint alone rebuilds the network (``SegModule.load_from_checkpoint``).

    Args:
        net: ``model/`` config (``_target_: segexp.model.networks.build_model`` + arch arguments).
        loss: ``loss/`` config.
        optimizer: ``optimizer/`` config, a partial ``f(module) -> Optimizer``
            (``segexp.model.optim.build_optimizer``: parameter groups, encoder LR multiplier).
        scheduler: ``scheduler/`` config, a partial ``f(optimizer, total_steps)``, or None.
        num_classes / ignore_index / class_names: from the data config.
        mean / std: the normalisation the network was trained with (kept for inference).
        pad_multiple: inputs are padded to this multiple and outputs cropped back;
            None: the multiple the network needs (``segexp.model.networks.required_multiple``).
        channels_last: keep the network's weights and its inputs in channels_last memory
            format (NHWC). Same results; faster convolutions on a GPU (docs/benchmarks.md).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        num_classes: int = 2,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pad_multiple: int | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = PadToMultiple(instantiate(net), pad_multiple)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.criterion = instantiate(loss)
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        # One confusion matrix (+ loss sum) per stage; every score is derived from it
        # (segexp.model.metrics), logged once at the end of the epoch.
        self.confmats = torch.nn.ModuleDict(
            {stage: EvalState(num_classes, ignore_index=ignore_index) for stage in ("val", "test")}
        )
        self.run_config: dict | None = None  # the full run config, stored in checkpoints
        # How test_step predicts (see set_inference); None: plain forward, as in training.
        self.inference = None
        # The last computed confusion matrix per stage (evaluate.py writes it out).
        self.last_confmat: dict[str, torch.Tensor] = {}

    def set_inference(self, inference: Any) -> None:
        """Predict test batches with ``inference`` (a ``segexp.infer.engine.Inference``: slide
        windows, TTA, post-processing) instead of a plain forward; None restores the forward."""
        self.inference = inference

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes, H, W) logits."""
        return self.net(images.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits)
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        if stage == "test" and self.inference is not None:
            # log-probabilities stand in for logits: same argmax, same cross-entropy.
            mean, std = self.hparams.mean, self.hparams.std
            logits = self.inference.log_probs(self, batch["image"], mean, std)
        else:
            logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        # (B, C, H, W) -> (B, H, W); the loss is averaged with the matrix, not logged per step.
        predictions = argmax_classes(logits)
        self.confmats[stage].update(predictions, batch["mask"], loss)
        return predictions

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The predicted classes (B, H, W): callbacks' ``on_test_batch_end`` gets them as
        ``outputs`` (the evaluation analysis, ``segexp.track.analysis``)."""
        return self._eval_step(batch, "test")

    def _log_scores(self, stage: str) -> None:
        confmat = self.confmats[stage]
        # compute() gathers the states of all processes, so every rank logs the global figures.
        matrix = confmat.compute()
        self.last_confmat[stage] = matrix.detach().cpu()
        scores = {f"{stage}/loss": float(confmat.mean_loss)}
        scores.update(flat_scores(matrix, self.class_names, stage))
        confmat.reset()
        # One self.log (the progress bar's figure); Lightning's ~1 ms per self.log call would
        # cost more than the metrics themselves on small images (docs/benchmarks.md, figure 3). The
        # others go to the loggers once, as Lightning would write them (step, epoch), and to
        # callback_metrics, which checkpoint/early-stopping monitors and metrics.json read.
        headline = f"{stage}/mIoU"
        self.log(headline, scores[headline], prog_bar=True)
        rest = {name: value for name, value in scores.items() if name != headline}
        trainer = self.trainer
        trainer.callback_metrics.update({name: torch.tensor(v) for name, v in rest.items()})
        if trainer.is_global_zero and not trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics({**rest, "epoch": self.current_epoch}, step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(self)  # segexp.model.optim.build_optimizer
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps = self.trainer.estimated_stepping_batches  # inf is refused by the schedule
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        trainer = self._trainer
        if trainer is not None:  # train/ and LR figures: a resume that trains no more keeps them
            checkpoint["train_metrics"] = {
                key: float(value)
                for key, value in trainer.callback_metrics.items()
                if not key.startswith(("val/", "test/")) and value.numel() == 1
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("run_config")
        saved = checkpoint.get("train_metrics")
        self.resumed_metrics: dict[str, float] = dict(saved) if isinstance(saved, dict) else {}


def build_module(cfg: Any, datamodule: Any | None = None) -> SegModule:
    """The SegModule of a composed run config: the one builder train.py, the benchmarks and
    the tests use, so they cannot drift apart.

    With ``datamodule``, its class names are used and ``weight: auto`` in the loss config
    becomes the train split's class weights (cached under ``<paths.data_dir>/class_weights``).
    The full resolved config is kept in the module and stored in its checkpoints.
    """
    from pathlib import Path

    from omegaconf import OmegaConf

    from segexp.data.class_weights import fill_auto_weights

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    loss = plain(cfg.loss)
    if datamodule is not None:
        loss = fill_auto_weights(loss, datamodule, Path(cfg.paths.data_dir) / "class_weights")
    module = SegModule(
        net=plain(cfg.model),
        loss=loss,
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        num_classes=int(cfg.data.num_classes),
        ignore_index=int(cfg.data.ignore_index),
        class_names=datamodule.class_names if datamodule is not None else None,
        mean=list(cfg.augment.mean),
        std=list(cfg.augment.std),
        channels_last=bool(cfg.get("channels_last", False)),
    )
    module.run_config = plain(cfg)
    return module
