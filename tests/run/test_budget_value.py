"""budget= values in seconds (segexp.run.budget_value): wall times, and auto under SLURM."""

from __future__ import annotations

import os
import stat

import pytest

from segexp.run.budget_value import BudgetError, parse_budget, parse_duration, slurm_time_left


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
