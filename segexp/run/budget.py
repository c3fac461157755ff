"""Train to a time budget: ``python train.py budget=00:10:00`` (or ``budget=auto`` under SLURM).

The run measures what its steps cost and plans how many fit, so that training, the
periodic validation and the final test end within the budget:

- the clock starts when the process starts (a multirun's later jobs: when the job starts),
  so imports and data preparation count;
- after a few warm-up steps ``BudgetPlanner`` (``segexp.run.budget_planner``) fits
  ``elapsed = train_s + validations``: seconds per training step (data loading, logging and checkpoints included), from the
  recent steps, and seconds per validation run (measured; estimated from the step time
  until the first one has run). The final test is estimated from the validation's time per
  batch, and a margin is kept for what follows it;
- the plan is the largest number of steps whose predicted end fits; the trainer stops at
  that step (``max_steps``; a validation runs there even mid-epoch) and the learning-rate
  schedule (poly, cosine, onecycle) is stretched or shrunk to end exactly at it
  (``segexp.model.optim.set_total_steps``);
- it re-plans every few steps and after every validation, so a machine that slows down
  (or speeds up) moves the last step; under DDP every rank plans from the slowest rank's
  figures (an all-reduce max), so they all stop at the same step.

``trainer.max_epochs`` / ``trainer.max_steps`` are replaced by the plan. What was planned
and what happened (seconds and steps) is merged into ``run_info.json`` under ``budget``.
In a sweep every trial gets the whole budget. A budgeted run is not repeatable step for
step: the number of steps depends on the machine's speed (run_info.json records it).

This module is the Lightning side (``TimeBudget``: the clock, the measurements, applying
the plan); what ``budget=`` values mean is ``segexp.run.budget_value``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl

from segexp.run.budget_planner import WARMUP_STEPS, BudgetPlanner, Plan
from segexp.run.budget_value import parse_budget


def process_start_time() -> float:
    """When this process started (``time.time`` clock); now when the system cannot say."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_first_job = True


def job_start_time() -> float:
    """The budget's start: the process's start for its first job, now for a multirun's later ones."""
    global _first_job
    started = process_start_time() if _first_job else time.time()
    _first_job = False
    return min(started, time.time())


def _all_reduce_max(values: list[float], device: Any) -> list[float]:
    """The element-wise maximum over the DDP processes (as is without a process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.cpu()]


class TimeBudget(pl.Callback):
    """Plan the steps of a run to end within ``budget_s`` (module doc); train.py adds it.

    Args:
        budget_s: seconds, from ``started`` to the end of the test.
        started: when the budget started (``clock`` time; default: the job's start).
        test: whether a test follows the fit (its time is kept free).
        replan_every: steps between re-plans; None: about 2 % of the budget's steps.
        clock: seconds, ``time.time`` by default (tests pass a fake one).
    """

    def __init__(
        self,
        budget_s: float,
        started: float | None = None,
        test: bool = True,
        replan_every: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.budget_s = float(budget_s)
        self.clock = clock
        self.started = job_start_time() if started is None else float(started)
        self.test = test
        self.replan_every = replan_every
        self.planner: BudgetPlanner | None = None
        self.plan: Plan | None = None
        self.history: list[dict[str, float]] = []
        self.fit_start = self.val_start = 0.0
        self.val_total = 0.0
        self.val_runs: list[float] = []
        self.replan_due = False
        self.next_replan = 0
        self.fit_end_s: float | None = None
        self.steps_done = 0
        self.first_step = 0

    # -- what the trainer knows about its data
    @staticmethod
    def _batches(trainer: pl.Trainer, split: str) -> int:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return 0
        try:
            dataset = datamodule.datasets.get(split) or datamodule.setup_split(split)
            batch = getattr(datamodule, "val_batch_size", None) or datamodule.batch_size
            return math.ceil(len(dataset) / (batch * max(1, trainer.world_size)))
        except Exception:  # noqa: BLE001 - unknown: the margin must do
            return 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = max(
            1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        )
        every = trainer.check_val_every_n_epoch or 1
        val_every = (
            per_epoch * every if trainer.val_check_batch == trainer.num_training_batches else 0
        )
        if trainer.val_check_batch and trainer.val_check_batch < trainer.num_training_batches:
            val_every = max(1, math.ceil(trainer.val_check_batch / trainer.accumulate_grad_batches))
        val_batches = self._batches(trainer, "val") if trainer.limit_val_batches else 0
        test_batches = (self._batches(trainer, "test") or val_batches) if self.test else 0
        self.planner = BudgetPlanner(
            self.budget_s,
            val_every=val_every if val_batches else 0,
            val_batches=val_batches,
            test_batches=test_batches,
            final_validation=bool(val_batches),
            warmup_steps=trainer.global_step + WARMUP_STEPS,
        )
        self.first_step = trainer.global_step
        self.next_replan = trainer.global_step + WARMUP_STEPS
        # The plan replaces the epoch and step limits (the schedule was built from them).
        trainer.fit_loop.max_epochs = -1
        self.fit_start = self.clock()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.planner is None:
            return
        self.val_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.planner is None or not self.val_start:
            return
        took = self.clock() - self.val_start
        self.val_total += took
        self.val_runs.append(took)
        self.val_start = 0.0
        self.replan_due = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.planner is None:
            return
        step = trainer.global_step
        if self.plan is not None and step >= self.plan.total_steps:
            trainer.should_stop = True  # a validation still runs at this step
            return
        # Every rank re-plans at the same steps (the figures are all-reduced there).
        if step >= self.next_replan or (self.replan_due and self.plan is not None):
            self.replan(trainer, pl_module)

    def replan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        now = self.clock()
        recent = self.val_runs[-3:]
        local = [
            now - self.started,
            now - self.fit_start - self.val_total,
            sum(recent) / len(recent) if recent else -1.0,
            -self.budget_s,  # the smallest budget of the ranks (budget=auto reads it on each)
        ]
        elapsed, train_s, val_s, neg_budget = _all_reduce_max(local, pl_module.device)
        planner = self.planner
        planner.budget_s = -neg_budget
        planner.observe(step, elapsed, train_s, val_s if val_s >= 0 else None)
        self.replan_due = False
        plan = planner.plan()
        if plan is None:
            self.next_replan = step + 1
            return
        self.plan = plan
        if self.replan_every is None:
            self.replan_every = max(1, round(0.02 * self.budget_s / max(plan.step_s, 1e-6)))
        self.next_replan = step + self.replan_every
        self.apply(trainer, plan)

    def apply(self, trainer: pl.Trainer, plan: Plan) -> None:
        from segexp.model.optim import set_total_steps

        trainer.fit_loop.epoch_loop.max_steps = max(plan.total_steps, trainer.global_step)
        for config in trainer.lr_scheduler_configs:
            set_total_steps(config.scheduler, plan.total_steps)
        if not self.history or self.history[-1]["total_steps"] != plan.total_steps:
            self.history.append(
                {
                    "step": plan.step,
                    "total_steps": plan.total_steps,
                    "elapsed_s": round(plan.elapsed_s, 2),
                    "step_s": round(plan.step_s, 5),
                    "val_s": round(plan.val_s, 3),
                }
            )
        if trainer.global_step >= plan.total_steps:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_end_s = self.elapsed()
        self.steps_done = trainer.global_step

    def summary(self, end_s: float | None = None) -> dict[str, Any]:
        """What was planned and what happened: the ``budget`` entry of run_info.json."""
        plan = self.plan
        info: dict[str, Any] = {
            "budget_s": round(self.budget_s, 2),
            "planned_steps": plan.total_steps if plan else None,
            "steps": self.steps_done,
            "planned_end_s": round(plan.predicted_end_s, 2) if plan else None,
            "fit_end_s": round(self.fit_end_s, 2) if self.fit_end_s is not None else None,
            "step_s": round(plan.step_s, 5) if plan else None,
            "val_s": round(plan.val_s, 3) if plan else None,
            "test_reserved_s": round(plan.tail_s, 2) if plan else None,
            "validations": len(self.val_runs),
            "replans": self.history,
        }
        if end_s is not None:
            info["end_s"] = round(end_s, 2)
            info["end_over_budget"] = round(end_s / self.budget_s, 4)
        return info

    def record(self, run_dir: str | os.PathLike) -> dict[str, Any]:
        """Merge :meth:`summary` (with the end of the run: now) into ``<run_dir>/run_info.json``."""
        from segexp.run.rundir import update_run_info

        info = self.summary(self.elapsed())
        update_run_info(run_dir, {"budget": info})
        print(
            f"budget: {info['budget_s']:.0f} s, run ended at {info['end_s']:.0f} s "
            f"({info['end_over_budget']:.1%}), {info['steps']} steps "
            f"(planned {info['planned_steps']})",
            flush=True,
        )
        return info


def budget_callback(cfg: Any) -> TimeBudget | None:
    """The TimeBudget of a train config's ``budget`` key (None: no budget)."""
    seconds = parse_budget(cfg.get("budget"))
    if seconds is None:
        return None
    return TimeBudget(seconds, test=bool(cfg.get("test", True)))


__all__ = ["TimeBudget", "budget_callback"]
