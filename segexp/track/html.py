"""One self-contained HTML page that compares runs (``python -m segexp.compare ... --html``).

Nothing is fetched when the page opens: the style and the script are inline and every
picture is a base64 ``data:`` URI. The style, the sorting script, ``cell`` and
``sortable_table`` serve the evaluation analysis page too (``segexp.track.analysis_page``):
every ``table.sortable`` sorts by a click on a header, and ``page.html#sort=<column>`` (or
``#sort=-<column>``, descending) sorts the page's first one (here the runs) on load.
The page holds the runs table,
the overrides that differ and those every run shares, the per-class IoU of the runs side
by side with the best value of each class marked, the learning curves overlaid, and the
validation examples (``val/examples/``) of the best runs side by side.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.track.pictures import EXAMPLES_SUBDIR

MAX_CLASS_COLUMNS = 12  # per-class IoU: at most this many runs side by side (the best ones)
MAX_CURVES = 10  # learning curves: at most this many runs overlaid

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.text { text-align: left; }
tr.failed td, tr.incomplete td { color: #999; }
td.best { background: #d6f5d6; font-weight: bold; }
.muted { color: #666; font-size: 0.9em; }
.examples { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
.examples figure { margin: 0; } .examples img { max-width: 340px; border: 1px solid #ccc; }
.examples.wide img { max-width: 760px; }
.examples.wide figure { display: table; }  /* the picture sets the width; the caption wraps */
.examples.wide figcaption { display: table-caption; caption-side: top; overflow-wrap: anywhere; }
figcaption { font-size: 0.85em; margin-bottom: 0.3em; }
img.plot { max-width: 100%; }
"""

# Every table.sortable sorts by a click on a header; the hash (#sort=col or #sort=-col)
# sorts the page's first one on load.
SCRIPT = """
function sortTable(table, col, desc) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => {
    const cell = row.cells[col];
    const v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  };
  rows.sort((a, b) => {
    let x = key(a), y = key(b);
    if (x === "" && y === "") return 0;
    if (x === "") return 1;  // empty cells last, either way
    if (y === "") return -1;
    const nx = Number(x), ny = Number(y);
    const cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
    return desc ? -cmp : cmp;
  });
  rows.forEach((row) => body.appendChild(row));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
    th.classList.remove("sorted-asc", "sorted-desc");
    if (i === col) th.classList.add(desc ? "sorted-desc" : "sorted-asc");
  });
  table.setAttribute("data-sorted", table.tHead.rows[0].cells[col].getAttribute("data-col") + (desc ? ":desc" : ":asc"));
}
function mainTable() { return document.querySelector("table.sortable"); }
function sortByName(name) {
  const table = mainTable();
  if (!table) return;
  const desc = name.startsWith("-");
  const wanted = desc ? name.slice(1) : name;
  const ths = Array.from(table.tHead.rows[0].cells);
  const col = ths.findIndex((th) => th.getAttribute("data-col") === wanted);
  if (col >= 0) sortTable(table, col, desc);
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach((table) => {
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      th.addEventListener("click", () => {
        const desc = th.classList.contains("sorted-asc");
        sortTable(table, i, desc);
        if (table === mainTable()) {
          history.replaceState(null, "", "#sort=" + (desc ? "-" : "") + encodeURIComponent(th.getAttribute("data-col")));
        }
      });
    });
  });
  const match = /(?:^|[#&?])sort=([^&]+)/.exec(location.hash || location.search);
  if (match) sortByName(decodeURIComponent(match[1]));
});
window.addEventListener("hashchange", () => {
  const match = /(?:^|[#&])sort=([^&]+)/.exec(location.hash);
  if (match) sortByName(decodeURIComponent(match[1]));
});
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def cell(value: Any) -> str:
    """A table cell: numbers carry their value (data-v) for sorting, text is left-aligned."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # a numpy scalar: its Python number (repr without np.float64)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<td data-v=""></td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = value if isinstance(value, str) else json.dumps(value)
        return f'<td class="text">{html.escape(text)}</td>'
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td data-v="{value!r}">{html.escape(shown)}</td>'


def sortable_table(
    table_id: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    row_attributes: Sequence[str] | None = None,
) -> str:
    """A table that sorts by a click on a header (``SCRIPT``); ``row_attributes``: the
    attributes of each ``<tr>``, already escaped."""
    head = "".join(
        f'<th data-col="{html.escape(c, quote=True)}" title="sort by {html.escape(c)}">'
        f"{html.escape(c)}</th>"
        for c in columns
    )
    attributes = row_attributes or [""] * len(rows)
    body = "".join(
        f"<tr{(' ' + extra) if extra else ''}>{''.join(cell(v) for v in row)}</tr>"
        for row, extra in zip(rows, attributes)
    )
    return (
        f'<table id="{html.escape(table_id, quote=True)}" class="sortable" data-sorted="">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def runs_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    status = list(columns).index("status") if "status" in columns else None
    attributes = [
        f'class="{html.escape(str(row[status])) if status is not None else ""}" '
        f'data-run="{html.escape(str(row[1]))}"'
        for row in rows
    ]
    return sortable_table("runs", columns, rows, attributes)


def overrides_section(
    runs: Sequence[dict[str, Any]], varying: Sequence[str], common: dict[str, Any]
) -> str:
    def fmt(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    parts = []
    if varying:
        items = []
        for key in varying:
            values = []
            for run in runs:
                text = fmt(run["params"].get(key))
                if text not in values:
                    values.append(text)
            items.append(
                f"<li><code>{html.escape(key)}</code>: "
                + ", ".join(f"<code>{html.escape(v)}</code>" for v in values)
                + "</li>"
            )
        parts.append(f"<p>Differ between runs:</p><ul>{''.join(items)}</ul>")
    else:
        parts.append("<p>No override differs between the runs.</p>")
    if common:
        shared = ", ".join(
            f"<code>{html.escape(k)}={html.escape(fmt(v))}</code>" for k, v in common.items()
        )
        parts.append(f'<p class="muted">Same in every run: {shared}</p>')
    return "".join(parts)


def per_class_stage(runs: Sequence[dict[str, Any]], metric: str) -> str | None:
    """The split whose per-class IoU the page shows: the metric's own, else one the runs have."""
    preferred = metric.split("/", 1)[0]
    for stage in (preferred, "val", "test"):
        if any(k.startswith(f"{stage}/iou/") for r in runs for k in r["metrics"]):
            return stage
    return None


def per_class_table(runs: Sequence[dict[str, Any]], metric: str) -> str:
    """Classes as rows, runs as columns (best first); the best IoU of each class marked."""
    stage = per_class_stage(runs, metric)
    if stage is None:
        return '<p class="muted">No per-class IoU in the runs\' metrics.json.</p>'
    prefix = f"{stage}/iou/"
    shown = [r for r in runs if any(k.startswith(prefix) for k in r["metrics"])][:MAX_CLASS_COLUMNS]
    classes: list[str] = []
    for run in shown:
        classes += [
            k[len(prefix) :]
            for k in run["metrics"]
            if k.startswith(prefix) and k[len(prefix) :] not in classes
        ]
    head = "<th>class</th>" + "".join(f"<th>{html.escape(r['run'])}</th>" for r in shown)
    body = []
    for name in classes:
        values = []
        for run in shown:
            value = run["metrics"].get(prefix + name)
            ok = isinstance(value, (int, float)) and math.isfinite(value)
            values.append(float(value) if ok else None)
        known = [v for v in values if v is not None]
        # The best value of the class; none marked when every run scores the same.
        best = max(known) if len(set(known)) > 1 or len(shown) == 1 else None
        cells = []
        for value in values:
            if value is None:
                cells.append("<td></td>")
            elif best is not None and value == best:
                cells.append(
                    f'<td class="best" title="best for this class">{value:.4f} &#9733;</td>'
                )
            else:
                cells.append(f"<td>{value:.4f}</td>")
        body.append(f'<tr><td class="text">{html.escape(name)}</td>{"".join(cells)}</tr>')
    note = f'<p class="muted">{html.escape(stage)} IoU per class; &#9733; the best run for the class.</p>'
    return (
        f'{note}<table id="per-class"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def figure(picture: Path, caption: str) -> str:
    """One inline picture with its caption (escaped); a missing file: the caption alone."""
    text = html.escape(caption)
    if not picture.is_file():
        return f"<figure><figcaption>{text} (no picture)</figcaption></figure>"
    alt = html.escape(caption, quote=True)
    source = data_uri(picture.read_bytes())
    return f'<figure><figcaption>{text}</figcaption><img alt="{alt}" src="{source}"></figure>'


def latest_examples(run_dir: Path) -> Path | None:
    """The run's last ``val/examples/epoch_NNN.png``, or None."""
    pictures = sorted((Path(run_dir) / EXAMPLES_SUBDIR).glob("epoch_*.png"))
    return pictures[-1] if pictures else None


def examples_section(runs: Sequence[dict[str, Any]], metric: str, top_k: int) -> str:
    figures = []
    for run in runs[:top_k]:
        picture = latest_examples(run["dir"])
        if picture is None:
            continue
        value = run["metrics"].get(metric)
        score = f" ({metric} {value:.4f})" if isinstance(value, (int, float)) else ""
        figures.append(figure(picture, f"{run['run']}{score}, {picture.stem.replace('_', ' ')}"))
    if not figures:
        return '<p class="muted">No run has val/examples/ pictures.</p>'
    return f'<div class="examples">{"".join(figures)}</div>'


def render_page(
    *,
    title: str,
    metric: str,
    mode: str,
    runs: Sequence[dict[str, Any]],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    varying: Sequence[str],
    common: dict[str, Any],
    curves_png: bytes | None,
    top_k: int,
    image_changes: str = "",
) -> str:
    curves = (
        f'<img class="plot" alt="learning curves" src="{data_uri(curves_png)}">'
        if curves_png
        else '<p class="muted">No learning curves (no csv/metrics.csv in the runs).</p>'
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{len(runs)} runs, sorted by {html.escape(metric)} ({mode}); '
        "click a column header to sort by it.</p>",
        "<h2>Runs</h2>",
        runs_table(columns, rows),
        "<h2>Overrides</h2>",
        overrides_section(runs, varying, common),
        "<h2>Per-class IoU</h2>",
        per_class_table(runs, metric),
        "<h2>Learning curves</h2>",
        curves,
        f"<h2>Validation examples, best {top_k}</h2>",
        examples_section(runs, metric, top_k),
    ]
    if image_changes:
        sections += ["<h2>Per-image changes</h2>", image_changes]
    return page(title, sections)


def page(title: str, sections: Sequence[str]) -> str:
    """A whole self-contained page: the style and the sorting script, then ``sections``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head><body>{''.join(sections)}</body></html>\n"
    )
