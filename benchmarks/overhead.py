"""Figure 1: seconds per training step, segexp's Trainer vs a hand-written PyTorch loop.

Both train copies of the same SegModule (same initial weights) on the same batches
held in memory, with the optimizer and per-step LR schedule of the config. The
segexp side is the Trainer exactly as train.py builds it: the default loggers
(W&B offline + CSV, every ``log_every_n_steps``), callbacks (checkpoint, LR
monitor) and progress bar. A third variant, a Trainer with no logger, callback or
progress bar, splits the overhead into "Lightning's loop" and "what we log".

A step's time is the interval between the starts of consecutive steps, so
everything done between two steps (logging, progress bar, callbacks) is counted.
"""

from __future__ import annotations

import copy
import statistics
import time

from benchmarks.harness import (
    Figure,
    Settings,
    best,
    first_batches,
    interleaved,
    prepared_datamodule,
    silenced,
)
from segexp.model.module import build_module

TARGET = "<= 1.05"


def _step_clock():
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        """Records when each training step starts."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(time.perf_counter())

    return StepClock()


def _mean_interval(starts: list[float], warmup: int) -> float:
    intervals = [b - a for a, b in zip(starts, starts[1:])][warmup:]
    return statistics.fmean(intervals)


def bare_loop(module, batches, optimizer_factory, scheduler_factory, warmup: int) -> float:
    """A hand-written loop: forward, loss, backward, step, LR step, read the loss."""
    module.train()
    optimizer = optimizer_factory(module)  # build_optimizer takes the module (param groups)
    scheduler = (
        scheduler_factory(optimizer, total_steps=len(batches)) if scheduler_factory else None
    )
    starts = []
    for batch in batches:
        starts.append(time.perf_counter())
        logits = module.net(batch["image"])
        loss = module.criterion(logits, batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss.item()  # a real loop reports its loss
    starts.append(time.perf_counter())
    return _mean_interval(starts, warmup)


def lightning_loop(module, batches, trainer_factory, warmup: int) -> float:
    """``trainer.fit`` on the same in-memory batches; returns mean seconds per step."""
    from torch.utils.data import DataLoader

    clock = _step_clock()
    trainer = trainer_factory(clock)
    loader = DataLoader(batches, batch_size=None)  # the batches are already collated
    with silenced():  # the progress bar and Lightning's banners
        trainer.fit(module, train_dataloaders=loader)
    return _mean_interval(clock.starts, warmup)


def run(settings: Settings) -> list[Figure]:
    from hydra.utils import instantiate

    steps, warmup, repeats = (6, 1, 1) if settings.quick else (25, 3, 2)
    cfg = settings.compose(["data.num_workers=0"])
    datamodule = prepared_datamodule(cfg)
    batches = first_batches(datamodule.train_dataloader(), steps)
    template = build_module(cfg, datamodule)
    optimizer_factory = instantiate(cfg.optimizer)
    scheduler_factory = instantiate(cfg.scheduler) if cfg.scheduler else None
    # Same loop length in both: one epoch of exactly `steps` batches, no validation.
    trainer_overrides = {"max_epochs": 1, "limit_val_batches": 0}
    run_index = iter(range(1000))

    def segexp_trainer(clock):
        """Loggers, callbacks and Trainer as train.py instantiates them."""
        out = settings.out_dir / f"overhead-run{next(run_index)}"
        run_cfg = settings.compose(["data.num_workers=0", f"hydra.run.dir={out}"])
        run_cfg.paths.output_dir = str(out)
        loggers = [instantiate(entry) for entry in (run_cfg.logger or {}).values() if entry]
        callbacks = [
            instantiate(entry)
            for name, entry in (run_cfg.callbacks or {}).items()
            if entry and (loggers or name != "lr_monitor")
        ]
        return instantiate(
            run_cfg.trainer,
            callbacks=[*callbacks, clock],
            logger=loggers or False,
            **trainer_overrides,
        )

    def plain_trainer(clock):
        return instantiate(
            cfg.trainer,
            callbacks=[clock],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            **trainer_overrides,
        )

    results = interleaved(
        {
            "bare": lambda: bare_loop(
                copy.deepcopy(template), batches, optimizer_factory, scheduler_factory, warmup
            ),
            "segexp": lambda: lightning_loop(
                copy.deepcopy(template), batches, segexp_trainer, warmup
            ),
            "plain": lambda: lightning_loop(
                copy.deepcopy(template), batches, plain_trainer, warmup
            ),
        },
        repeats,
    )
    _finish_wandb()
    bare, segexp, plain = best(results["bare"]), best(results["segexp"]), best(results["plain"])
    settings.cache["train_step_s"] = bare
    settings.cache["batch_size"] = int(batches[0]["image"].shape[0])
    size = tuple(batches[0]["image"].shape)
    return [
        Figure("bare PyTorch loop: s/step", bare, "s", note=f"batch {size}, best of {repeats}"),
        Figure("segexp Trainer (default loggers+callbacks): s/step", segexp, "s"),
        Figure("Lightning Trainer, no logger/callbacks/bar: s/step", plain, "s"),
        Figure("Lightning loop alone / bare loop", plain / bare, "x", note="detail"),
        Figure("segexp Trainer / bare loop", segexp / bare, "x", TARGET),
    ]


def _finish_wandb() -> None:
    """Close the last offline W&B run so its service does not keep a core busy."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(quiet=True)
    except Exception:  # noqa: BLE001 - W&B missing or already closed: nothing to finish
        pass
