"""Smoke test of the benchmark suite, second file: the quick suite's last figures (budget and
analysis, half its time). Beside tests/test_benchmarks.py so that make test's two processes
run the two halves side by side."""

from __future__ import annotations

import pytest

from tests.test_benchmarks import REST, run_quick_bench


@pytest.mark.slow
def test_quick_bench_prints_the_other_figures(tmp_path):
    run_quick_bench(tmp_path / "bench", REST)
