"""Train to a time budget: ``python train.py budget=00:10:00`` (or ``budget=auto`` under SLURM).

The run measures what its steps cost and plans how many fit, so that training, the
periodic validation and the final test end within the budget:

- the clock starts when the process starts (a multirun's later jobs: when the job starts),
  so imports and data preparation count;
- after a few warm-up steps :class:`BudgetPlanner` fits ``elapsed = train_s + validations``:
  seconds per training step (data loading, logging and checkpoints included), from the
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
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl

from segexp.errors import UserError

WARMUP_STEPS = 3  # steps left out of the step time (first batches, allocator, worker start-up)
MEASURE_STEPS = 3  # measured steps before the first plan
WINDOW = 6  # re-plans that the step time is fitted over: recent enough to follow a change
EVAL_COST = 0.3  # a validation batch vs a training step, until a validation has been measured
TAIL_MARGIN_S = 3.0  # after the test: metrics, pictures, process exit
TAIL_MARGIN_FRACTION = 0.01
AUTO_MARGIN_S = 60.0  # budget=auto: kept free of the SLURM job's remaining time ...
AUTO_MARGIN_FRACTION = 0.05  # ... or this fraction of it, whichever is larger


class BudgetError(UserError):
    """A ``budget=`` value that cannot be used; the message says what to write instead."""


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds of ``[days-]HH:MM:SS``, ``MM:SS``, ``90``, ``90s``, ``10m``, ``1.5h``; ValueError otherwise."""
    text = str(text).strip()
    days = 0
    if re.fullmatch(r"\d+-[\d:]+", text):
        head, text = text.split("-", 1)
        days = int(head)
    if ":" in text:
        parts = text.split(":")
        if len(parts) > 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
            raise ValueError(text)
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
        return days * 86400 + seconds
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?", text)
    if not match:
        raise ValueError(text)
    return days * 86400 + float(match.group(1)) * _UNITS[match.group(2) or "s"]


def slurm_time_left(job_id: str | None = None) -> float | None:
    """Seconds left to the SLURM job (``squeue -h -j $SLURM_JOB_ID -o %L``); None when unlimited."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise BudgetError(
            "budget=auto reads the SLURM job's remaining time, but SLURM_JOB_ID is not set "
            "(not inside a SLURM job); give a wall time instead, e.g. budget=00:10:00."
        )
    if shutil.which("squeue") is None:
        raise BudgetError(
            "budget=auto: squeue is not on PATH, so the job's remaining time cannot be read; "
            "give a wall time instead, e.g. budget=00:10:00."
        )
    result = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%L"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    left = result.stdout.strip()
    if result.returncode != 0 or not left:
        raise BudgetError(
            f"budget=auto: `squeue -h -j {job_id} -o %L` failed ({result.stderr.strip() or 'no output'}); "
            "give a wall time instead, e.g. budget=00:10:00."
        )
    if left.upper() in ("UNLIMITED", "NOT_SET", "INVALID"):
        return None
    try:
        return parse_duration(left)
    except ValueError:
        raise BudgetError(
            f"budget=auto: squeue reported {left!r} as the job's remaining time, which is not "
            "[days-]HH:MM:SS; give a wall time instead, e.g. budget=00:10:00."
        ) from None


def auto_margin(time_left: float) -> float:
    """What budget=auto keeps free of the job's remaining time: the last checkpoint, the exit."""
    return max(AUTO_MARGIN_S, AUTO_MARGIN_FRACTION * time_left)


def parse_budget(
    value: Any, time_left: Callable[[], float | None] = slurm_time_left
) -> float | None:
    """``budget=`` in seconds: None (no budget), a wall time, or ``auto`` (SLURM's remaining
    time minus :func:`auto_margin`). Raises BudgetError with the fix for anything else."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    if isinstance(value, bool):
        raise BudgetError(f"budget={value}: give a wall time such as budget=00:10:00 (or null).")
    if isinstance(value, str) and value.strip().lower() == "auto":
        left = time_left()
        if left is None:
            raise BudgetError(
                "budget=auto: this SLURM job has no time limit, so there is nothing to plan for; "
                "give a wall time instead, e.g. budget=02:00:00."
            )
        seconds = left - auto_margin(left)
        if seconds <= 0:
            raise BudgetError(
                f"budget=auto: the SLURM job has {left:.0f} s left, less than the "
                f"{auto_margin(left):.0f} s margin kept for the checkpoint and exit; submit "
                "with a longer --time."
            )
        return seconds
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
    except ValueError:
        raise BudgetError(
            f"budget={value!r} is not a wall time; write HH:MM:SS (budget=00:10:00), seconds "
            "(budget=600), 10m / 2h, or budget=auto inside a SLURM job."
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise BudgetError(f"budget={value!r}: the time must be positive, e.g. budget=00:10:00.")
    return seconds


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


# ------------------------------------------------------------------------------ planning


@dataclass
class Plan:
    """One plan: stop after ``total_steps``; the figures it was made from (seconds)."""

    total_steps: int
    step: int  # the step it was made at
    elapsed_s: float
    step_s: float  # per training step
    val_s: float  # per validation run
    tail_s: float  # the test and what follows it
    predicted_end_s: float  # elapsed at the end of the run, as planned


@dataclass
class BudgetPlanner:
    """How many steps fit in ``budget_s``, from the observed figures (no clock of its own).

    Args:
        budget_s: seconds from the start to the end of the run (test included).
        val_every: steps between validations (an epoch times check_val_every_n_epoch);
            0: no periodic validation.
        val_batches / test_batches: batches of one validation run and of the final test.
        final_validation: a validation also runs at the last step when it is mid-epoch.
        warmup_steps: steps whose time is left out of the step time.
    """

    budget_s: float
    val_every: int = 0
    val_batches: int = 0
    test_batches: int = 0
    final_validation: bool = True
    warmup_steps: int = WARMUP_STEPS
    samples: list[tuple[int, float]] = field(default_factory=list)  # (step, train seconds)
    val_s: float | None = None  # measured seconds per validation run
    elapsed_s: float = 0.0
    step: int = 0

    def observe(self, step: int, elapsed_s: float, train_s: float, val_s: float | None) -> None:
        """At ``step``: ``elapsed_s`` since the start, ``train_s`` of it outside validation (since
        fit started), ``val_s`` the mean measured validation run (None before the first)."""
        self.step, self.elapsed_s = int(step), float(elapsed_s)
        if val_s is not None:
            self.val_s = float(val_s)
        if step >= self.warmup_steps:
            if self.samples and self.samples[-1][0] == step:
                self.samples[-1] = (step, float(train_s))
            else:
                self.samples.append((int(step), float(train_s)))
            del self.samples[: -(WINDOW + 1)]

    def step_seconds(self) -> float | None:
        """Seconds per training step over the recent re-plans (None until two samples)."""
        if len(self.samples) < 2:
            return None
        (first_step, first_s), (last_step, last_s) = self.samples[0], self.samples[-1]
        if last_step - first_step < MEASURE_STEPS:
            return None
        return max(last_s - first_s, 0.0) / (last_step - first_step)

    def validation_seconds(self, step_s: float) -> float:
        if self.val_s is not None:
            return self.val_s
        return EVAL_COST * step_s * self.val_batches

    def tail_seconds(self, val_s: float) -> float:
        """The final test (at the validation's speed per batch) and a margin after it."""
        test = val_s * self.test_batches / max(1, self.val_batches) if self.test_batches else 0.0
        return test + TAIL_MARGIN_S + TAIL_MARGIN_FRACTION * self.budget_s

    def validations(self, step: int, more: int) -> int:
        """Validation runs from a re-plan at ``step`` to the end of training ``more`` steps later.

        A re-plan runs before its step's own validation, so a validation due at ``step`` (an
        epoch's end) still counts; the last step gets one even mid-epoch (``final_validation``).
        """
        end = step + max(0, more)
        count = 0
        if self.val_every > 0:
            count = end // self.val_every - (step - 1) // self.val_every
            if end % self.val_every and self.final_validation:
                count += 1
        elif self.final_validation:
            count = 1
        return count

    def cost(self, more: int, step_s: float, val_s: float) -> float:
        return more * step_s + self.validations(self.step, more) * val_s

    def plan(self) -> Plan | None:
        """The largest total whose predicted end fits the budget; None before enough samples."""
        step_s = self.step_seconds()
        if step_s is None:
            return None
        val_s = self.validation_seconds(step_s)
        tail_s = self.tail_seconds(val_s)
        room = self.budget_s - self.elapsed_s - tail_s
        if room <= 0:
            more = 0
        else:
            per_step = step_s + (val_s / self.val_every if self.val_every else 0.0)
            high = int(room / max(per_step, 1e-9)) + 2
            low = 0  # the largest ``more`` with cost(more) <= room, by bisection (cost rises with more)
            while low < high:
                middle = (low + high + 1) // 2
                if self.cost(middle, step_s, val_s) <= room:
                    low = middle
                else:
                    high = middle - 1
            more = low
        total = self.step + more
        predicted = self.elapsed_s + self.cost(more, step_s, val_s) + tail_s
        return Plan(total, self.step, self.elapsed_s, step_s, val_s, tail_s, predicted)


# ------------------------------------------------------------------------------ callback


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


__all__ = [
    "BudgetError",
    "BudgetPlanner",
    "Plan",
    "TimeBudget",
    "budget_callback",
    "parse_budget",
    "parse_duration",
]
