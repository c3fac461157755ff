"""TimeBudget (segexp.run.budget): the schedule ends at the planned step; ranks plan alike."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from segexp.run.budget import TimeBudget


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
