"""segexp.track.compare: the table, plots and web page built from run folders alone."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from segexp.cli.compare import main
from segexp.errors import UserError
from segexp.track.compare import compare
from segexp.track.runs import find_runs, parse_overrides
from tests.conftest import TINY, run_script

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
    """Values typed as Hydra typed them for the run."""
    params = parse_overrides(
        ["optimizer.lr=1e-3", "loss=dice", "+extra=3", "~gone", "test=false", "x=[1,2]",
         "++name='a b'", "model@net=fpn", "lr=0.1,0.2", "bad=[1"]
    )  # fmt: skip
    assert params == {
        "optimizer.lr": 0.001,
        "loss": "dice",
        "extra": 3,
        "test": False,
        "x": [1, 2],
        "name": "a b",
        "model@net": "fpn",
        "lr": "0.1,0.2",  # a sweep, not one value: its text
        "bad": "[1",  # not Hydra syntax: its text
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


def test_cli_empty_folder_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: compare: no run folders (with .hydra/config.yaml) under {tmp_path}"
    )


# -- the web page ------------------------------------------------------------------------------
class PageParser(HTMLParser):
    """The parts of the comparison page the tests look at: the runs table's rows (run names
    in order), the per-class cells marked best, every src/href, the scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.best: list[str] = []
        self.links: list[str] = []
        self.sorted: str | None = None
        self.images = 0
        self._in_runs = False
        self._in_best = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "table":
            self._in_runs = attrs.get("id") == "runs"
            if self._in_runs:
                self.sorted = attrs.get("data-sorted")
        if tag == "tr" and self._in_runs and "data-run" in attrs:
            self.rows.append(attrs["data-run"])
        if tag == "td" and "best" in (attrs.get("class") or ""):
            self._in_best = True
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        self.images += tag == "img"

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_runs = False
        if tag == "td":
            self._in_best = False

    def handle_data(self, data: str) -> None:
        if self._in_best:
            self.best.append(data.strip())


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def make_pictured_runs(root: Path) -> Path:
    """Three runs with per-class IoU, learning curves and val/examples pictures."""
    from PIL import Image

    scores = {"0": (0.5, 0.9, 0.1), "1": (0.7, 0.6, 0.8), "2": (0.6, 0.95, 0.25)}
    for name, (miou, bg, fg) in scores.items():
        lr = {"0": 0.001, "1": 0.01, "2": 0.1}[name]
        metrics = {"val/mIoU": miou, "val/iou/background": bg, "val/iou/shape": fg}
        metrics["val/iou/never"] = 0.0  # the same in every run: nobody is best
        run = make_run(root, name, [f"optimizer.lr={lr}", "loss=ce"], metrics, [miou / 2, miou])
        (run / "val" / "examples").mkdir(parents=True)
        for epoch in (0, 1):
            colour = (40 * int(name), 100, 30 * epoch)
            Image.new("RGB", (60, 40), colour).save(
                run / "val" / "examples" / f"epoch_{epoch:03d}.png"
            )
    return root


def test_html_page_is_self_contained_with_every_part(tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    root = make_pictured_runs(tmp_path / "sweep")
    page_path = tmp_path / "out" / "report.html"
    result = compare(root, html=page_path, top_k=2, plots=False)
    assert page_path in result["files"]
    text = page_path.read_text()
    page = parse_page(text)
    assert page.rows == ["1", "2", "0"]  # best first
    # Nothing from the network: every src is inline, no external style or script.
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    # Per-class IoU side by side: the best run of each class is marked.
    assert page.best == ["0.9500 \u2605", "0.8000 \u2605"]  # background: run 2, shape: run 1
    assert "optimizer.lr" in text and "Same in every run" in text and "loss=ce" in text
    # The curves plus the last examples of the best 2 runs (1 and 2), epoch_001 of each.
    assert page.images == 3
    last = [link for link in page.links][1:]
    colours = [
        Image.open(io.BytesIO(base64.b64decode(link.split(",", 1)[1]))).getpixel((0, 0))
        for link in last
    ]
    assert colours == [(40, 100, 30), (80, 100, 30)]


def test_cli_html_over_several_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(tmp_path / "a", "0", ["loss=ce"], {"val/mIoU": 0.3})
    make_run(tmp_path / "b", "0", ["loss=dice"], {"val/mIoU": 0.6})
    out = tmp_path / "report.html"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--html", str(out), "--no-plots"]) == 0
    assert parse_page(out.read_text()).rows == ["b/0", "a/0"]
    assert "| 1 | b/0 | done | 0.6 | dice |" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_multirun_page_in_a_real_browser(tmp_path: Path) -> None:
    """A 3-job multirun writes compare.html; headless chromium opens it, takes a screenshot,
    and the page's script sorts the table by the column named in the URL."""
    from PIL import Image

    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        *TINY,
        "optimizer.lr=0.001,0.003,0.01",
        "test=false",
        "callbacks.image_logger.every_n_epochs=1",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = sweep / "compare.html"
    assert page.is_file() and (sweep / "compare.md").is_file()
    assert len(parse_page(page.read_text()).rows) == 3

    shot = tmp_path / "page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri())
    assert shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as picture:
        assert picture.size == (1200, 1400)
        colours = dict((rgb, n) for n, rgb in picture.convert("RGB").getcolors(1200 * 1400))
    # The page's own style was applied to its tables: header cells are #f0f0f0 and the best
    # per-class IoU cells #d6f5d6 (STYLE in segexp/track/html.py), each a filled area.
    assert colours.get((240, 240, 240), 0) > 5000, sorted(colours.items(), key=lambda c: -c[1])[:8]
    assert colours.get((214, 245, 214), 0) > 2000, sorted(colours.items(), key=lambda c: -c[1])[:8]

    orders = {}
    for column in ("optimizer.lr", "-optimizer.lr"):
        dumped = chromium("--dump-dom", f"{page.as_uri()}#sort={column}")
        dom = parse_page(dumped.stdout)
        assert len(dom.rows) == 3, dumped.stderr[-2000:]
        assert dom.sorted == column.lstrip("-") + (":desc" if column[0] == "-" else ":asc")
        orders[column] = dom.rows
    assert orders["optimizer.lr"] == ["0", "1", "2"]  # job i has the i-th learning rate
    assert orders["-optimizer.lr"] == ["2", "1", "0"]
