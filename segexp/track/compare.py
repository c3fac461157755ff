"""Compare runs from their folders alone (no W&B needed).

    segexp compare multirun/2026-11-27/18-40-00        # one sweep
    segexp compare outputs --metric test/mIoU --top-k 5  # every run under outputs/
    segexp compare multirun/a multirun/b --html report.html  # several, one web page

Prints a table of runs sorted by a metric, with the overridden parameters as
columns, and writes beside it (or under ``--out``): ``compare.csv``,
``compare.md``, ``metric_vs_params.png`` (the metric against each parameter that
varies) and ``learning_curves.png`` (the best k runs, from ``csv/metrics.csv``);
with ``--html`` one self-contained page (``segexp.track.html``): the table sortable by
any column, the differing overrides, per-class IoU side by side, the curves and the
validation examples of the best k runs. When exactly two runs hold ``per_image.csv``
(``segexp eval``'s analysis), ``image_changes.csv`` and the page list the images that got
better or worse most, the first folder given being the baseline
(``segexp.track.image_changes``).
Reading the run folders is ``segexp.track.runs``, the plots ``segexp.track.compare_plots``,
the command line ``segexp.cli.compare``; ``segexp.track.sweeps.SweepSummary`` does the same
at the end of every multirun, ``compare.html`` included.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.errors import UserError
from segexp.track.compare_plots import plot_learning_curves, plot_metric_vs_params
from segexp.track.image_changes import (
    PER_IMAGE,
    changes_markdown,
    image_changes,
    write_changes_csv,
)
from segexp.track.runs import format_value, load_runs, metric_value, sort_runs, split_params

log = logging.getLogger(__name__)

EXTRA_METRICS = ("val/mIoU", "val/pixel_acc", "test/mIoU", "test/pixel_acc")


# -- the table --------------------------------------------------------------------------------
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
        values = [metric_value(run, m) for m in metrics]
        rows.append(
            [rank, run["run"], run["status"], *values, *(run["params"].get(p) for p in params)]
        )
    return columns, rows


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return format_value(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


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
    changes: dict[str, Any] | None = None,
) -> Path:
    """The self-contained comparison page (``segexp.track.html``), written atomically."""
    from segexp.track.analysis_page import changes_section
    from segexp.track.html import MAX_CURVES, render_page

    buffer = io.BytesIO()
    scored = sum(1 for r in runs if metric_value(r, metric) is not None)
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
        image_changes=changes_section(changes),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- all of it --------------------------------------------------------------------------------
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
    analysed = [r for r in runs if (r["dir"] / PER_IMAGE).is_file()]  # in the order given
    runs = sort_runs(runs, metric, mode)
    if not any(metric_value(r, metric) is not None for r in runs):
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
            f"{k}={format_value(v)}" for k, v in common.items()
        )

    changes = image_changes(*analysed) if len(analysed) == 2 else None
    if changes:
        markdown += "\n\n" + changes_markdown(changes)
    elif len(analysed) > 2:
        log.warning("compare: per-image changes need exactly two runs with %s", PER_IMAGE)

    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", columns, rows)
    (out / "compare.md").write_text(markdown + "\n")
    files = [out / "compare.csv", out / "compare.md"]
    if changes:
        files.append(write_changes_csv(out / "image_changes.csv", changes))
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
            write_html(
                Path(html),
                runs,
                metric,
                mode,
                top_k,
                columns,
                rows,
                varying,
                common,
                roots,
                changes,
            )  # fmt: skip
        )
    return {
        "markdown": markdown,
        "columns": columns,
        "rows": rows,
        "common": common,
        "files": files,
    }
