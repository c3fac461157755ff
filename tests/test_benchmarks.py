"""Smoke tests of the benchmark suite: it runs at tiny sizes and prints every figure.

Benchmarks are not tests: nothing here asserts a timing or a verdict, only that
each figure was measured (a number, not a failure) and reported.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from benchmarks.__main__ import FIGURES, TITLES
from tests import forkrun
from tests.conftest import run_script

# The quick suite runs in two tests in two files, so that make test's two processes can run
# them side by side (together they are the suite's longest test).
FIRST = FIGURES[: FIGURES.index("sweep") + 1]  # overhead ... quality, transfer, sweep
REST = FIGURES[len(FIRST) :]  # budget, analysis: about as long as the first eight


def run_quick_bench(out: Path, figures: tuple[str, ...]) -> tuple[str, dict]:
    """``python -m benchmarks --quick --only <figures>``: each figure printed and measured, every
    target judged; returns the printed report and results.json. Its own commands fork from a
    zygote of it (tests/quick_bench.py); that zygote's warnings are passed on here."""
    result = run_script(
        "-m", "tests.quick_bench", "--quick", "--only", ",".join(figures), "--out", str(out),
        timeout=1800,
    )  # fmt: skip
    for line in result.stderr.splitlines():
        if "ZygoteWarning: " in line:
            warnings.warn(forkrun.ZygoteWarning(line.split("ZygoteWarning: ", 1)[1]), stacklevel=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in figures:
        assert TITLES[name] in result.stdout, name
    assert "failed" not in result.stdout, result.stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["figures"]) == set(figures)
    for name, measured in results["figures"].items():
        judged = [f for f in measured if f["target"]]
        assert [f for f in measured if f["value"] is not None], f"{name}: no figure measured"
        assert all(f["verdict"] in ("HOLDS", "MISSES") for f in judged), (name, judged)
    return result.stdout, results


@pytest.mark.slow
def test_quick_bench_prints_the_first_figures(tmp_path):
    out = tmp_path / "bench"
    stdout, results = run_quick_bench(out, FIRST)
    # Every target of the issue is printed with its verdict (quality's 5-minute target is full-size only).
    for target in ("<= 1.05", ">= 2", "<= 1.03", "<= 0.15"):
        assert f"target {target}" in stdout, target
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


@pytest.mark.slow
def test_figure_eleven_smoke_runs_every_part(tmp_path):
    """`python -m benchmarks.gpu --smoke`: the GPU figure's arms, ratios, FLOPs, validation,
    sliding window and loader, then the CPU table, at tiny sizes; results.json holds them."""
    result = run_script("-m", "benchmarks.gpu", "--smoke", "--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    figures = {f["name"]: f for f in saved["figures"]}
    rate = {
        arm: next(f["value"] for n, f in figures.items() if n.startswith(f"unet-r34: ({arm})"))
        for arm in "abc"
    }
    assert all(math.isfinite(v) and v > 0 for v in rate.values()), rate
    assert figures["unet-r34: segexp / bare loop (b / a)"]["value"] == pytest.approx(
        rate["b"] / rate["a"]
    )
    assert figures["unet-r34: what the options buy (b / c)"]["value"] == pytest.approx(
        rate["b"] / rate["c"]
    )
    assert figures["device bf16 dense peak"]["value"] is None  # a CPU: no MFU guessed
    assert not any("MFU" in name for name in figures)
    assert figures["unet-r34: model TFLOP/s of (b)"]["value"] > 0
    for name in ("validation, all metrics / forward only", "sliding window + flip"):
        assert any(name in n and f["value"] > 0 for n, f in figures.items()), name
    assert figures["unet 64 px: validation, all metrics / forward only"]["target"] == "<= 1.03"
