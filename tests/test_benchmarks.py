"""Smoke tests of the benchmark suite: it runs at tiny sizes and prints every figure.

Benchmarks are not tests: nothing here asserts a timing or a verdict, only that
each figure was measured (a number, not a failure) and reported.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.__main__ import FIGURES, TITLES
from tests.conftest import run_script


@pytest.mark.slow
def test_quick_bench_prints_every_figure(tmp_path):
    out = tmp_path / "bench"
    result = run_script(
        "-m", "benchmarks", "--quick", "--out", str(out), timeout=1800
    )  # minutes on a loaded machine
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in FIGURES:
        assert TITLES[name] in result.stdout, name
    assert "failed" not in result.stdout, result.stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["figures"]) == set(FIGURES)
    for name, figures in results["figures"].items():
        judged = [f for f in figures if f["target"]]
        measured = [f for f in figures if f["value"] is not None]
        assert measured, f"{name}: no figure measured"
        assert all(f["verdict"] in ("HOLDS", "MISSES") for f in judged), (name, judged)
    # Every target of the issue is printed with its verdict (quality's 5-minute target is full-size only).
    for target in ("<= 1.05", ">= 2", "<= 1.03", "<= 0.15"):
        assert f"target {target}" in result.stdout, target
    curve = results["quality"][0]["points"]
    assert [p["mark_s"] for p in curve] == [2, 4]
    # Scored while training went on (after a step at least, never back in time), not NaN.
    assert 0 < curve[0]["step"] <= curve[1]["step"], curve
    assert all(math.isfinite(p["val_mIoU"]) for p in curve), curve
    assert (out / "quality_per_minute.png").stat().st_size > 1000


@pytest.mark.slow
def test_gpu_script_smoke_on_cpu():
    result = run_script(
        "-m", "benchmarks.gpu", "--smoke", "--variants", "fp32,bf16+cl", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("fp32 ") for line in lines), result.stdout
    assert any(line.startswith("bf16+cl ") for line in lines), result.stdout
    assert "fastest:" in result.stdout
