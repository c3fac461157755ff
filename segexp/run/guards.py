"""Callbacks that keep a run's checkpoints good and its resume exact.

- ``FiniteLoss``: a NaN or infinite training loss stops the run before the
  backward pass (so no update and no checkpoint carries it) with an error that
  names the step and what to try; the last good ``last.ckpt`` stays.
- ``ExactResume``: checkpoints carry the RNG states and the position in the
  epoch's data, so a resumed run continues the uninterrupted one bit for bit.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLoss(pl.Callback):
    """Stop with an actionable error when the training loss is NaN or infinite.

    The check runs before the backward pass, so the weights (and every checkpoint)
    stay those of the last finite step.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if torch.isfinite(loss).all():
            return
        value = float(loss.detach().float().mean().item())
        last = self.dirpath / "last.ckpt" if self.dirpath else None
        if last is not None and last.is_file():
            kept = f"The last good checkpoint is {last} (saved before this step; nothing after it was saved)."
        else:
            kept = "No checkpoint was saved yet."
        lr = _current_lr(trainer)
        raise NonFiniteLossError(
            f"train/loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}). {kept} "
            f"Try: a lower learning rate (optimizer.lr{'=' + format(lr, 'g') if lr is not None else ''}, "
            f"e.g. 10x lower), a warmup (scheduler.warmup_steps=...), gradient clipping "
            f"(trainer.gradient_clip_val=1.0), precision=32-true if you use 16-mixed, and check the data "
            f"(mask labels vs data.num_classes/ignore_index, images that are constant or corrupt)."
        )


class ExactResume(pl.Callback):
    """Checkpoint what a resume needs to continue the run bit for bit.

    The global RNG states (torch, CUDA, numpy, random), for dropout and other random
    layers. The position in the epoch's data order is the DataModule's own checkpoint
    state (``SegDataModule.state_dict``); data order and augmentation are otherwise
    seeded per epoch (``segexp.data.sampling.SeededSampler``).
    Stored as tensors and plain lists, so the checkpoint loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [
                name,
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(cached),
            ],
            "python": _tuple_to_list(random.getstate()),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(_list_to_tuple(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _tuple_to_list(value: Any) -> Any:
    return [_tuple_to_list(v) for v in value] if isinstance(value, tuple) else value


def _list_to_tuple(value: Any) -> Any:
    return tuple(_list_to_tuple(v) for v in value) if isinstance(value, list) else value


def _current_lr(trainer: pl.Trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return None
