"""budget=: parsing, the step planner (fake clocks) and the schedule ending at the planned step."""

from __future__ import annotations

import os
import stat

import pytest
import pytorch_lightning as pl

from segexp.run.budget import (
    BudgetError,
    BudgetPlanner,
    TimeBudget,
    parse_budget,
    parse_duration,
    slurm_time_left,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("00:10:00", 600),
        ("1:30", 90),
        ("1-00:00:10", 86410),
        (600, 600),
        (2.5, 2.5),
        ("90s", 90),
        ("10m", 600),
        ("1.5h", 5400),
        (None, None),
        ("null", None),
    ],
)
def test_budget_values(value, seconds):
    assert parse_budget(value) == seconds


@pytest.mark.parametrize("value", ["ten minutes", "1:2:3:4", "0", -5, "00:00:00", True, "5x"])
def test_bad_budgets_say_how_to_write_one(value):
    with pytest.raises(BudgetError, match=r"budget=.*(HH:MM:SS|00:10:00)"):
        parse_budget(value)


def test_budget_auto_is_the_slurm_time_left_less_a_margin():
    assert parse_budget("auto", time_left=lambda: 3600.0) == 3600 - 180  # 5 % of an hour
    assert parse_budget("auto", time_left=lambda: 600.0) == 600 - 60  # at least a minute
    with pytest.raises(BudgetError, match="no time limit"):
        parse_budget("auto", time_left=lambda: None)
    with pytest.raises(BudgetError, match="longer --time"):
        parse_budget("auto", time_left=lambda: 50.0)


def test_budget_auto_outside_slurm_is_refused(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(BudgetError, match="SLURM_JOB_ID is not set.*budget=00:10:00"):
        parse_budget("auto")


def test_slurm_time_left_reads_squeue(monkeypatch, tmp_path):
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\n[ "$3" = 4242 ] && [ "$5" = %L ] && echo " 1-02:03:04"\n')
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm_time_left() == parse_duration("1-02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    assert parse_budget("auto") == pytest.approx(93784 * 0.95)
    squeue.write_text("#!/bin/sh\necho UNLIMITED\n")
    assert slurm_time_left() is None


# ------------------------------------------------------------------ the planner, fake clocks


def simulate(budget_s, step_s, val_s=2.0, test_s=1.0, start_s=5.0, per_epoch=10, replan_every=5):
    """Drive a BudgetPlanner the way TimeBudget does, on a fake clock.

    ``step_s(step)`` is the time of each training step. After a step: the re-plan (every
    ``replan_every`` steps and after each validation), then that step's validation (``val_s``)
    when it ends an epoch or training; the test takes ``test_s``.
    Returns (end of the run, planner, [(step, planned total)]).
    """
    planner = BudgetPlanner(
        budget_s, val_every=per_epoch, val_batches=4, test_batches=2, warmup_steps=3
    )
    now, train_s, vals, step, total, totals, due = start_s, 0.0, [], 0, None, [], False
    while total is None or step < total:
        took = step_s(step)
        now += took
        train_s += took
        step += 1
        if (total is None or step < total) and (step < 8 or step % replan_every == 0 or due):
            planner.observe(step, now, train_s, sum(vals) / len(vals) if vals else None)
            plan = planner.plan()
            due = False
            if plan is not None:
                total = plan.total_steps
                totals.append((step, total))
        if step % per_epoch == 0 or (total is not None and step >= total):
            now += val_s
            vals.append(val_s)
            due = True
        if step > 100_000:
            raise AssertionError("never stopped")
    return now + test_s, planner, totals


def test_the_plan_fills_the_budget_without_overrunning():
    budget = 300.0
    end, _, totals = simulate(budget, lambda step: 0.5)
    assert 0.97 * budget <= end <= budget
    # A steady machine: once a validation has been measured, a steady plan.
    assert len({total for step, total in totals if step > 10}) == 1


def test_the_plan_shrinks_when_steps_get_slower_and_grows_when_faster():
    budget = 300.0
    steady_end, _, steady = simulate(budget, lambda step: 0.5)
    slow_end, _, slowed = simulate(budget, lambda step: 0.5 if step < 100 else 1.0)
    fast_end, _, sped = simulate(budget, lambda step: 0.5 if step < 100 else 0.25)
    assert slowed[-1][1] < steady[-1][1] < sped[-1][1]
    # The plan made before the change was wrong; the re-plans caught it.
    before = [total for step, total in slowed if step < 100][-1]
    assert before == steady[-1][1]
    for end in (slow_end, fast_end):
        assert 0.95 * budget <= end <= 1.01 * budget


def test_a_plan_counts_validations_and_the_test():
    planner = BudgetPlanner(100.0, val_every=10, val_batches=4, test_batches=8)
    for step, train_s in ((3, 3.0), (8, 8.0)):  # one second per step
        planner.observe(step, 20.0 + train_s, train_s, 5.0)
    plan = planner.plan()
    assert plan.step_s == pytest.approx(1.0)
    assert plan.tail_s == pytest.approx(5.0 * 8 / 4 + 3.0 + 1.0)  # test at val speed + margin
    more = plan.total_steps - 8
    spent = more + 5.0 * planner.validations(8, more)
    assert 28.0 + spent + plan.tail_s <= 100.0 < 28.0 + spent + 1 + 5.0 + plan.tail_s
    assert planner.validations(8, 2) == 1 and planner.validations(8, 3) == 2  # the last step's
    # A re-plan at an epoch's last step comes before that epoch's validation: it counts.
    assert planner.validations(10, 0) == 1 and planner.validations(10, 5) == 2


def test_no_room_left_plans_no_more_steps():
    planner = BudgetPlanner(30.0, val_every=10, val_batches=4)
    planner.observe(3, 25.0, 3.0, None)
    planner.observe(8, 40.0, 8.0, None)
    plan = planner.plan()
    assert plan.total_steps == 8
    assert plan.predicted_end_s > 40.0 + plan.tail_s  # the validation at the stop is counted


# --------------------------------------------------- the schedule ends at the planned step


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ticker(pl.Callback):
    """Advances the fake clock: ``step_s`` per training step, ``val_s`` per validation."""

    def __init__(self, clock: FakeClock, step_s: float, val_s: float) -> None:
        self.clock, self.step_s, self.val_s = clock, step_s, val_s
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.now += self.step_s

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.clock.now += self.val_s


@pytest.mark.parametrize("scheduler", ["poly", "cosine", "onecycle"])
def test_the_schedule_ends_exactly_at_the_planned_last_step(compose_cfg, scheduler):
    from hydra.utils import instantiate

    from segexp.model.module import build_module

    overrides = [f"scheduler={scheduler}", "trainer.max_epochs=50"]
    if scheduler == "cosine":
        overrides.append("scheduler.warmup_steps=2")
    cfg = compose_cfg(overrides)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    clock = FakeClock()
    ticker = Ticker(clock, step_s=1.0, val_s=0.5)
    budget = TimeBudget(20.0, started=clock(), test=True, replan_every=2, clock=clock)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[ticker, budget],
        logger=False,
        enable_checkpointing=False,
        plugins=None,
    )
    trainer.fit(module, datamodule=datamodule)

    plan = budget.plan
    assert plan is not None and trainer.global_step == plan.total_steps
    assert 8 <= plan.total_steps < 50 * 2  # the budget, not max_epochs, ended the run
    assert budget.fit_end_s + plan.tail_s <= 20.0
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == plan.total_steps
    last_used, before_last = ticker.lrs[-1], ticker.lrs[-2]
    base = cfg.optimizer.lr
    if scheduler == "onecycle":  # torch's convention: the last step trains at the final LR
        final = base / cfg.scheduler.div_factor / cfg.scheduler.final_div_factor
        assert last_used == pytest.approx(final, rel=1e-6)
        assert before_last > final * 1.01
    else:  # LambdaLR's: the factor reaches its end after the last step
        final = base * cfg.scheduler.min_lr_ratio
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(final, abs=1e-12)
        assert last_used > final + 1e-6 * base
    summary = budget.summary(end_s=19.0)
    assert summary["steps"] == summary["planned_steps"] == plan.total_steps
    assert summary["end_over_budget"] == pytest.approx(19 / 20, abs=1e-4)


def _reduce_on_rank(rank: int, init_file: str, results: str) -> None:
    import json

    import torch.distributed as dist

    from segexp.run.budget import _all_reduce_max

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # rank 1 is the slow one: more elapsed and training time, a smaller budget
        values = _all_reduce_max([10.0 + rank, 5.0 + 3 * rank, 1.0 - rank, -(100.0 - rank)], "cpu")
    finally:
        dist.destroy_process_group()
    with open(f"{results}.{rank}", "w") as handle:
        json.dump(values, handle)


@pytest.mark.slow
def test_every_rank_plans_from_the_slowest_ranks_figures(tmp_path):
    import json

    import torch.multiprocessing as mp

    results = str(tmp_path / "reduced")
    mp.spawn(_reduce_on_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"reduced.{rank}").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1] == [11.0, 8.0, 1.0, -99.0]
