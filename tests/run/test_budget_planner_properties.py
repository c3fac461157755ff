"""Property tests of the step planner (segexp.run.budget_planner): whatever it has observed,
a plan never ends past the budget, and one more step would."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from segexp.run.budget_planner import (
    EVAL_COST,
    MEASURE_STEPS,
    TAIL_MARGIN_FRACTION,
    TAIL_MARGIN_S,
    WINDOW,
    BudgetPlanner,
)
from tests.run.test_budget_planner import simulate

SECONDS = st.floats(0.0, 50.0, allow_nan=False)


@st.composite
def observations(draw):
    """(planner settings, what TimeBudget fed it): steps that rise, clocks that run on."""
    setup = {
        "budget_s": draw(st.floats(1.0, 5000.0)),
        "val_every": draw(st.one_of(st.just(1), st.integers(0, 40))),
        "val_batches": draw(st.integers(0, 20)),
        "test_batches": draw(st.integers(0, 20)),
        "final_validation": draw(st.booleans()),
        "warmup_steps": draw(st.integers(0, 5)),
    }
    seen, step, elapsed, train = [], 0, draw(SECONDS), 0.0
    for _ in range(draw(st.integers(0, 12))):
        step += draw(st.integers(0, 30))
        took = draw(st.one_of(st.just(0.0), st.floats(1e-3, 20.0)))  # no sub-ns steps
        train += took
        elapsed += took + draw(SECONDS)  # validation and other time besides training
        seen.append((step, elapsed, train, draw(st.one_of(st.none(), st.floats(0.0, 30.0)))))
    return setup, seen


def observed(setup: dict, seen: list) -> BudgetPlanner:
    planner = BudgetPlanner(**setup)
    for step, elapsed, train, val_s in seen:
        planner.observe(step, elapsed, train, val_s)
    return planner


def measured_step_s(seen: list, warmup_steps: int) -> float | None:
    """Seconds per step over the last WINDOW re-plans past the warm-up (a step observed again
    counts once, with its latest figures); None before they span MEASURE_STEPS steps."""
    latest = {}
    for step, _, train, _ in seen:
        if step >= warmup_steps:
            latest[step] = train
    window = list(latest.items())[-(WINDOW + 1) :]
    if len(window) < 2 or window[-1][0] - window[0][0] < MEASURE_STEPS:
        return None
    return max(window[-1][1] - window[0][1], 0.0) / (window[-1][0] - window[0][0])


def validations(step: int, end: int, val_every: int, final: bool) -> int:
    """Validation runs of steps step..end: every val_every-th step (a re-plan comes before
    its own step's validation), and one at the end if it is not one of those."""
    due = range(-(-step // val_every) * val_every, end + 1, val_every) if val_every else range(0)
    last_is_due = len(due) > 0 and due[-1] == end
    return len(due) + (1 if final and not last_is_due else 0)


def predicted_end(planner: BudgetPlanner, plan, more: int) -> float:
    runs = validations(plan.step, plan.step + more, planner.val_every, planner.final_validation)
    return plan.elapsed_s + more * plan.step_s + runs * plan.val_s + plan.tail_s


# Two cases random draws seldom reach: less than a second of room, and a validation every step.
ROOM_UNDER_A_SECOND = (
    {"budget_s": 100.0, "val_batches": 4},
    [(3, 95.0, 0.3, None), (13, 95.5, 0.8, None)],
)
EVERY_STEP = ({"budget_s": 100.0, "val_every": 1}, [(3, 10.0, 3.0, 0.5), (13, 25.0, 13.0, 0.5)])


@settings(max_examples=300)
@given(observations())
@example(ROOM_UNDER_A_SECOND)
@example(EVERY_STEP)
def test_a_plan_fits_the_budget_and_one_more_step_would_not(case):
    setup, seen = case
    planner = observed(setup, seen)
    plan = planner.plan()
    step_s = measured_step_s(seen, planner.warmup_steps)
    assert (plan is None) == (step_s is None)
    if plan is None:
        return
    more = plan.total_steps - plan.step
    assert more >= 0 and plan.step == seen[-1][0] and plan.elapsed_s == seen[-1][1]
    assert math.isclose(plan.step_s, step_s, rel_tol=1e-9, abs_tol=1e-12)
    # The validation measured last (or, before one, estimated per batch), and the tail.
    measured = [val_s for *_, val_s in seen if val_s is not None]
    val_s = measured[-1] if measured else EVAL_COST * step_s * planner.val_batches
    assert math.isclose(plan.val_s, val_s, rel_tol=1e-9, abs_tol=1e-12)
    batches = max(1, planner.val_batches)
    test_s = val_s * planner.test_batches / batches if planner.test_batches else 0.0
    tail = test_s + TAIL_MARGIN_S + TAIL_MARGIN_FRACTION * planner.budget_s
    assert math.isclose(plan.tail_s, tail, rel_tol=1e-9, abs_tol=1e-9)
    end = predicted_end(planner, plan, more)
    assert math.isclose(plan.predicted_end_s, end, rel_tol=1e-9, abs_tol=1e-9)
    slack = 1e-9 * max(1.0, planner.budget_s)
    if more > 0:  # never past the budget
        assert plan.predicted_end_s <= planner.budget_s + slack
    # ... and as many steps as fit: one more would end past it (with a step that takes time).
    if plan.step_s > 0:
        assert predicted_end(planner, plan, more + 1) > planner.budget_s - slack


@settings(max_examples=100)
@given(observations(), st.data())
def test_observing_a_step_again_changes_nothing(case, data):
    """TimeBudget may re-plan twice at one step (after a validation): the same figures again
    leave the plan as it was."""
    setup, seen = case
    again = [o for o in seen for _ in range(data.draw(st.integers(1, 3)))]
    assert observed(setup, again).plan() == observed(setup, seen).plan()


@settings(max_examples=40)
@given(
    budget=st.floats(60.0, 600.0),
    step_s=st.floats(0.05, 2.0),
    val_s=st.floats(0.0, 3.0),
    per_epoch=st.integers(3, 40),
)
def test_a_steady_run_ends_within_its_budget(budget, step_s, val_s, per_epoch):
    """Driven the way TimeBudget drives it, on a machine whose steps and validations take
    constant times, the run (test included) ends within the budget once it had room to plan."""
    end, planner, totals = simulate(
        budget, lambda step: step_s, val_s=val_s, test_s=0.5 * val_s, per_epoch=per_epoch
    )
    if totals and totals[0][1] > totals[0][0]:  # the first plan left room to train on
        assert end <= budget * (1 + 1e-9), (end, totals[:3], totals[-3:])
