"""The step planner on fake clocks (segexp.run.budget_planner): it fills the budget, follows a
machine that slows down or speeds up, and counts validations and the test."""

from __future__ import annotations

import pytest

from segexp.run.budget_planner import BudgetPlanner


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


def test_less_room_than_one_step_plans_no_more_steps():
    """0.5 s of room left and 1 s steps (no validation, no test): stop where it is."""
    planner = BudgetPlanner(100.0, final_validation=False)
    planner.observe(3, 3.0, 3.0, None)
    planner.observe(8, 95.5, 8.0, None)  # tail: 3 s + 1 % of 100 s; room: 100 - 95.5 - 4
    plan = planner.plan()
    assert (plan.step_s, plan.tail_s) == (1.0, 4.0)
    assert plan.total_steps == 8 and plan.predicted_end_s == 99.5


def test_the_step_time_needs_three_measured_steps():
    """Samples at steps 3 and 6 (three steps apart, MEASURE_STEPS) give a step time; 3 and 5
    do not."""
    planner = BudgetPlanner(100.0)
    planner.observe(3, 10.0, 3.0, None)
    planner.observe(5, 12.0, 5.5, None)
    assert planner.step_seconds() is None
    planner.observe(6, 13.0, 7.5, None)
    assert planner.step_seconds() == pytest.approx((7.5 - 3.0) / 3)


def test_no_periodic_and_no_final_validation_counts_none():
    planner = BudgetPlanner(100.0, val_every=0, final_validation=False)
    assert [planner.validations(5, more) for more in (0, 1, 50)] == [0, 0, 0]
    planner = BudgetPlanner(100.0, val_every=0)
    assert [planner.validations(5, more) for more in (0, 1, 50)] == [1, 1, 1]
