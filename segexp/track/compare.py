"""Compare runs from their folders alone (no W&B needed).

    python -m segexp.compare multirun/2026-11-27/18-40-00       # one sweep
    python -m segexp.compare outputs --metric test/mIoU --top-k 5 # every run under outputs/
    python -m segexp.compare multirun/a multirun/b --html report.html  # several, one web page

Prints a table of runs sorted by a metric, with the overridden parameters as
columns, and writes beside it (or under ``--out``): ``compare.csv``,
``compare.md``, ``metric_vs_params.png`` (the metric against each parameter that
varies) and ``learning_curves.png`` (the best k runs, from ``csv/metrics.csv``);
with ``--html`` one self-contained page (``segexp.track.html``): the table sortable by
any column, the differing overrides, per-class IoU side by side, the curves and the
validation examples of the best k runs.
A run folder is any folder with ``.hydra/config.yaml``; its numbers come from
``metrics.json`` and its parameters from ``.hydra/overrides.yaml``.

``SweepSummary`` is a Hydra callback that does the same at the end of every multirun,
``compare.html`` included.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from segexp.errors import UserError

log = logging.getLogger(__name__)

EXTRA_METRICS = ("val/mIoU", "val/pixel_acc", "test/mIoU", "test/pixel_acc")
CURVE_FILE = Path("csv") / "metrics.csv"


# -- reading run folders ----------------------------------------------------------------------
def find_runs(root: str | Path) -> list[Path]:
    """Every run folder under ``root`` (``root`` itself if it is one), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"compare: {root} is not a folder; pass a multirun/ or outputs/ folder")
    runs = [config.parent.parent for config in root.rglob(".hydra/config.yaml")]
    # Numeric job folders (0, 1, ..., 10) in launch order, not 0, 1, 10, 2.
    return sorted(
        runs, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(p))]
    )


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """['model=fpn', 'optimizer.lr=1e-3', '+x=1'] -> {'model': 'fpn', 'optimizer.lr': 0.001, 'x': 1}.

    Values are typed by Hydra's own override parser, as the run saw them (``false`` ->
    False, ``[1,2]`` -> [1, 2]); deletions (``~key``) carry no value and are left out; an
    override the parser does not accept keeps its text.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params: dict[str, Any] = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:  # not Hydra syntax (hand-written file): key and text as written
            if "=" in text:
                key, value = text.split("=", 1)
                params[key.lstrip("+~")] = value
            continue
        if override.is_delete():
            continue
        key = override.get_key_element().lstrip("+~")
        params[key] = text.split("=", 1)[1] if override.is_sweep_override() else override.value()
    return params


def load_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run: its name (path under root), status, overridden params and final metrics."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if metrics_file.exists():
        status = "done"
    elif (run_dir / "error.txt").exists():
        status = "failed"
    elif (run_dir / "pruned.txt").exists():  # stopped early by the Optuna pruner
        status = "pruned"
    else:
        status = "incomplete"
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    return {
        "run": name,
        "dir": run_dir,
        "status": status,
        "params": parse_overrides(overrides or []),
        "metrics": metrics,
    }


def _metric(run: dict[str, Any], metric: str) -> float | None:
    value = run["metrics"].get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sort_runs(runs: list[dict[str, Any]], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """Best first; runs without the metric (failed, NaN, incomplete) last."""
    if mode not in ("max", "min"):
        raise UserError(f"compare: mode={mode!r} is not valid (valid: max, min)")
    sign = -1 if mode == "max" else 1
    return sorted(
        runs, key=lambda r: (_metric(r, metric) is None, sign * (_metric(r, metric) or 0.0))
    )


def split_params(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(parameters whose value differs between runs, {parameter: value} shared by all runs)."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run["params"] if key not in keys]
    varying, common = [], {}
    for key in keys:
        values = {json.dumps(run["params"].get(key), sort_keys=True) for run in runs}
        if len(values) > 1 or len(runs) == 1:
            varying.append(key)
        else:
            common[key] = runs[0]["params"][key]
    return varying, common


# -- the table --------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_table(
    runs: list[dict[str, Any]], metric: str, params: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """Columns: rank, run, status, the metric, other headline metrics, then the parameters."""
    metrics = [metric] + [
        m for m in EXTRA_METRICS if m != metric and any(m in r["metrics"] for r in runs)
    ]
    columns = ["rank", "run", "status", *metrics, *params]
    rows = []
    for rank, run in enumerate(runs, start=1):
        values = [_metric(run, m) for m in metrics]
        rows.append(
            [rank, run["run"], run["status"], *values, *(run["params"].get(p) for p in params)]
        )
    return columns, rows


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


# -- plots ------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_metric_vs_params(
    runs: list[dict[str, Any]], params: Sequence[str], metric: str, path: Path
) -> Path | None:
    """One panel per varying parameter: the metric of every run against the parameter's value."""
    scored = [r for r in runs if _metric(r, metric) is not None]
    if not params or not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, param in zip(axes[0], params):
        values = [r["params"].get(param) for r in scored]
        scores = [_metric(r, metric) for r in scored]
        if all(_is_number(v) for v in values):
            ax.scatter(values, scores)
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and max(values) / min(values) > 20:
                ax.set_xscale("log")  # learning rates and weight decays span decades
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels overlap
        else:
            categories = sorted({_fmt(v) for v in values})
            positions = [categories.index(_fmt(v)) for v in values]
            ax.scatter(positions, scores)
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} vs parameters ({len(scored)} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_curve(run_dir: Path, column: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``column`` from a run's ``csv/metrics.csv`` (Lightning's CSVLogger)."""
    path = run_dir / CURVE_FILE
    if not path.exists():
        return [], []
    epochs, values = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            value, epoch = row.get(column), row.get("epoch")
            if value not in (None, "") and epoch not in (None, ""):
                epochs.append(float(epoch) + 1)  # epoch 0 ends after one epoch of training
                values.append(float(value))
    return epochs, values


def plot_learning_curves(
    runs: list[dict[str, Any]], metric: str, path: Path, top_k: int = 3, params: Sequence[str] = ()
) -> Path | None:
    """The metric and the training loss per epoch of the best ``top_k`` runs, labelled by ``params``."""
    best = [r for r in runs if _metric(r, metric) is not None][:top_k]
    curves = [
        (r, read_curve(r["dir"], metric), read_curve(r["dir"], "train/loss_epoch")) for r in best
    ]
    curves = [c for c in curves if c[1][0] or c[2][0]]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_metric, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, (epochs, values), (loss_epochs, losses) in curves:
        varied = ",".join(f"{p.split('.')[-1]}={_fmt(run['params'].get(p))}" for p in params)
        label = f"{run['run']} {varied[:60]} ({_metric(run, metric):.3f})"
        ax_metric.plot(epochs, values, marker="o", label=label)
        ax_loss.plot(loss_epochs, losses, marker="o", label=label)
    ax_metric.set(xlabel="epoch", ylabel=metric, title=f"{metric}, best {len(curves)}")
    ax_loss.set(xlabel="epoch", ylabel="train/loss", title="training loss")
    for ax in (ax_metric, ax_loss):
        ax.grid(alpha=0.3)
    ax_metric.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the web page ------------------------------------------------------------------------------
MAX_CURVES = 10  # the page overlays the curves of at most this many runs (the best)


def write_html(
    path: Path,
    runs: list[dict[str, Any]],
    metric: str,
    mode: str,
    top_k: int,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    varying: Sequence[str],
    common: dict[str, Any],
    roots: Sequence[str | Path] = (),
) -> Path:
    """The self-contained comparison page (``segexp.track.html``), written atomically."""
    from segexp.track.html import render_page

    buffer = io.BytesIO()
    scored = sum(1 for r in runs if _metric(r, metric) is not None)
    curves = plot_learning_curves(runs, metric, buffer, min(max(scored, 1), MAX_CURVES), varying)
    page = render_page(
        title="segexp: " + ", ".join(str(r) for r in roots),
        metric=metric,
        mode=mode,
        runs=runs,
        columns=columns,
        rows=rows,
        varying=varying,
        common=common,
        curves_png=buffer.getvalue() if curves is not None else None,
        top_k=top_k,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- all of it --------------------------------------------------------------------------------
def load_runs(roots: Sequence[str | Path]) -> tuple[Path, list[dict[str, Any]]]:
    """(the folder run names are relative to, every run under ``roots``), each run once."""
    roots = [Path(r) for r in roots]
    if len(roots) == 1:
        base = roots[0]
    else:
        base = Path(os.path.commonpath([r.resolve() for r in roots]))
        roots = [r.resolve() for r in roots]
    seen: set[Path] = set()
    runs = []
    for root in roots:
        run_dirs = find_runs(root)
        if not run_dirs:
            raise UserError(f"compare: no run folders (with .hydra/config.yaml) under {root}")
        for run_dir in run_dirs:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                runs.append(load_run(run_dir, base))
    return base, runs


def compare(
    root: str | Path | Sequence[str | Path],
    metric: str = "val/mIoU",
    mode: str = "max",
    top_k: int = 3,
    out: str | Path | None = None,
    all_params: bool = False,
    plots: bool = True,
    html: str | Path | None = None,
) -> dict[str, Any]:
    """Read every run under ``root`` (one folder or several), write the table and plots to
    ``out`` (default: ``root``, or the folder that holds all of them) and, with ``html``,
    the web page to that file.

    Returns {"markdown", "columns", "rows", "common", "files"}.
    """
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not roots:
        raise UserError("compare: no folder given")
    root, runs = load_runs(roots)
    runs = sort_runs(runs, metric, mode)
    if not any(_metric(r, metric) is not None for r in runs):
        known = sorted({k for r in runs for k in r["metrics"]})
        log.warning(
            "compare: no run has metric %r (metrics found: %s)", metric, ", ".join(known) or "none"
        )
    varying, common = split_params(runs)
    params = varying + (list(common) if all_params else [])
    columns, rows = build_table(runs, metric, params)
    markdown = to_markdown(columns, rows)
    if common and not all_params:
        markdown += "\n\nSame in every run: " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in common.items()
        )

    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", columns, rows)
    (out / "compare.md").write_text(markdown + "\n")
    files = [out / "compare.csv", out / "compare.md"]
    if plots:
        files += [
            p
            for p in (
                plot_metric_vs_params(runs, varying, metric, out / "metric_vs_params.png"),
                plot_learning_curves(runs, metric, out / "learning_curves.png", top_k, varying),
            )
            if p
        ]
    if html:
        files.append(
            write_html(Path(html), runs, metric, mode, top_k, columns, rows, varying, common, roots)
        )
    return {
        "markdown": markdown,
        "columns": columns,
        "rows": rows,
        "common": common,
        "files": files,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segexp.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "roots",
        nargs="+",
        metavar="root",
        help="multirun sweep folders, outputs/, or any folders holding run folders",
    )
    parser.add_argument("--metric", default="val/mIoU", help="sort by this key of metrics.json")
    parser.add_argument("--mode", default="max", choices=("max", "min"))
    parser.add_argument("--top-k", type=int, default=3, help="learning curves of the best k runs")
    parser.add_argument(
        "--out",
        default=None,
        help="where to write the files (default: ROOT, or the folder holding all ROOTs)",
    )
    parser.add_argument(
        "--html", default=None, metavar="FILE", help="also write the comparison as one web page"
    )
    parser.add_argument(
        "--all-params", action="store_true", help="also the overrides every run shares"
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    from segexp.run.errors import exit_codes

    with exit_codes():  # a missing or empty folder: one line and exit 2
        result = compare(
            args.roots,
            args.metric,
            args.mode,
            args.top_k,
            args.out,
            args.all_params,
            not args.no_plots,
            args.html,
        )
    print(result["markdown"])
    print("\nwrote: " + ", ".join(str(f) for f in result["files"]))
    return 0


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # hydra is a dependency; this only keeps `compare` usable without it
    _HydraCallback = object


class SweepSummary(_HydraCallback):
    """Hydra callback: after a multirun, print and write the comparison of its jobs in the sweep folder."""

    def __init__(self, top_k: int = 3, plots: bool = True, html: bool = True) -> None:
        self.top_k = top_k
        self.plots = plots
        self.html = html

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = config.get("optimized_metric") or "val/mIoU"
        try:
            result = compare(
                sweep_dir,
                metric=metric,
                top_k=self.top_k,
                plots=self.plots,
                html=sweep_dir / "compare.html" if self.html else None,
            )
        except Exception as error:  # a summary must never turn a finished sweep into a failure
            log.warning("sweep summary of %s failed: %s", sweep_dir, error)
            return
        failed = sum(1 for row in result["rows"] if row[2] not in ("done", "pruned"))
        log.info("sweep summary (%s):\n%s", sweep_dir / "compare.md", result["markdown"])
        if failed:
            log.warning(
                "%d of %d jobs did not finish; see error.txt in their folders",
                failed,
                len(result["rows"]),
            )


if __name__ == "__main__":
    raise SystemExit(main())
