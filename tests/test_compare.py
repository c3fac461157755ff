"""segexp.track.compare: the table and plots built from run folders alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from segexp.errors import UserError
from segexp.track.compare import compare, find_runs, main, parse_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    name: str,
    overrides: list[str],
    metrics: dict | None,
    curve: list[float] = (),
    failed: bool = False,
) -> Path:
    """A run folder as train.py leaves it: .hydra/, metrics.json, csv/metrics.csv (or error.txt)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if failed:
        (run / "error.txt").write_text("Traceback ...\n")
    if curve:
        (run / "csv").mkdir()
        with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "step", "train/loss_epoch", "val/mIoU"])
            for epoch, value in enumerate(curve):
                writer.writerow([epoch, epoch * 10 + 9, "", value])  # the val row
                writer.writerow([epoch, epoch * 10 + 9, 1.0 / (epoch + 1), ""])  # the train row
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 4-job sweep over lr and loss; one job failed, one never wrote metrics."""
    root = tmp_path / "multirun" / "2026-11-27" / "10-00-00"
    common = ["trainer.max_epochs=2", "data.batch_size=4"]
    make_run(
        root,
        "0",
        ["optimizer.lr=0.001", "loss=ce", *common],
        {"val/mIoU": 0.50, "test/mIoU": 0.40},
        [0.3, 0.5],
    )
    make_run(
        root,
        "1",
        ["optimizer.lr=0.01", "loss=dice", *common],
        {"val/mIoU": 0.70, "test/mIoU": 0.65},
        [0.4, 0.7],
    )
    make_run(root, "2", ["optimizer.lr=0.1", "loss=ce", *common], None, failed=True)
    make_run(
        root, "10", ["optimizer.lr=0.0001", "loss=dice", *common], {"val/mIoU": None}, [0.1, 0.2]
    )
    (root / "multirun.yaml").write_text("hydra: {}\n")  # the sweep's own file is not a run
    return root


def test_parse_overrides_types() -> None:
    params = parse_overrides(
        ["optimizer.lr=1e-3", "loss=dice", "+extra=3", "~gone", "test=false", "x=[1,2]"]
    )
    assert params == {
        "optimizer.lr": 0.001,
        "loss": "dice",
        "extra": 3,
        "test": False,
        "x": "[1,2]",
    }


def test_find_runs_in_launch_order(sweep: Path) -> None:
    assert [p.name for p in find_runs(sweep)] == ["0", "1", "2", "10"]


def test_table_sorted_with_varying_params_as_columns(sweep: Path) -> None:
    result = compare(sweep, metric="val/mIoU", plots=False)
    columns, rows = result["columns"], result["rows"]
    assert columns == ["rank", "run", "status", "val/mIoU", "test/mIoU", "optimizer.lr", "loss"]
    # Best first; the NaN (null) run and the failed run come last.
    assert [row[1] for row in rows] == ["1", "0", "2", "10"]
    assert rows[0][2:7] == ["done", 0.70, 0.65, 0.01, "dice"]
    assert {row[1]: row[2] for row in rows} == {
        "0": "done",
        "1": "done",
        "2": "failed",
        "10": "done",
    }
    assert result["common"] == {"trainer.max_epochs": 2, "data.batch_size": 4}
    assert "Same in every run: trainer.max_epochs=2, data.batch_size=4" in result["markdown"]


def test_min_mode_and_other_metric(sweep: Path) -> None:
    rows = compare(sweep, metric="test/mIoU", mode="min", plots=False)["rows"]
    assert [row[1] for row in rows[:2]] == ["0", "1"]
    with pytest.raises(ValueError, match="mode='best'"):
        compare(sweep, mode="best", plots=False)


def test_files_written_csv_matches_markdown(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = compare(sweep, out=out, top_k=2)
    names = sorted(p.name for p in result["files"])
    assert names == ["compare.csv", "compare.md", "learning_curves.png", "metric_vs_params.png"]
    for png in ("learning_curves.png", "metric_vs_params.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    with (out / "compare.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == result["columns"]
    assert table[1][:4] == ["1", "1", "done", "0.7"]
    assert (out / "compare.md").read_text().startswith("| rank | run | status | val/mIoU")


def test_cli_prints_table(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--no-plots", "--all-params"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | 1 | done | 0.7 | 0.65 | 0.01 | dice | 2 | 4 |" in printed
    assert not (sweep / "metric_vs_params.png").exists()


def test_empty_folder_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run folders"):
        compare(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        compare(tmp_path / "missing")
