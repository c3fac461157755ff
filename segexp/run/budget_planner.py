"""How many training steps fit in a time budget, from the figures a run has measured.

``BudgetPlanner`` has no clock of its own: ``TimeBudget`` (``segexp.run.budget``) feeds it
the elapsed, training and validation seconds, and it fits ``elapsed = train_s + validations``
and returns the largest number of steps whose predicted end (the final test and a margin
included) fits the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WARMUP_STEPS = 3  # steps left out of the step time (first batches, allocator, worker start-up)
MEASURE_STEPS = 3  # measured steps before the first plan
WINDOW = 6  # re-plans that the step time is fitted over: recent enough to follow a change
EVAL_COST = 0.3  # a validation batch vs a training step, until a validation has been measured
TAIL_MARGIN_S = 3.0  # after the test: metrics, pictures, process exit
TAIL_MARGIN_FRACTION = 0.01


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
            # No more steps fit than the steps alone: an amortised validation cost per step
            # would cut the search short when no validation falls in the remaining steps.
            high = int(room / max(step_s, 1e-9)) + 2
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


__all__ = ["BudgetPlanner", "Plan"]
