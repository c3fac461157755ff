"""``analysis.html``: the evaluation analysis on one self-contained page, and the per-image
changes between two evaluations on the compare page.

The page (``segexp.track.analysis`` writes it) holds the worst images inline (base64
PNGs), then sortable tables (the style and script of ``segexp.track.html``): per-image
scores, confused pairs, IoU beside Boundary IoU per class, recall by object size. Every
name, path and class on it is escaped.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from segexp.infer.analysis import Analysis
from segexp.track.html import figure, page, sortable_table

IMAGE_COLUMNS = ("rank", "name", "path", "mIoU", "pixel acc", "boundary mIoU", "weakest class")


def _score(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def image_rows(analysis: Analysis, limit: int) -> list[list[Any]]:
    """The page's per-image table: the ``limit`` images of lowest mIoU (unscored last)."""
    rows = sorted(analysis.rows, key=lambda r: (math.isnan(r["mIoU"]), r["mIoU"], r["index"]))[
        :limit
    ]
    table = []
    for rank, row in enumerate(rows, start=1):
        iou = row["iou"]
        weakest = ""
        if np.isfinite(iou).any():
            index = int(np.nanargmin(iou))
            weakest = f"{analysis.class_names[index]} ({iou[index]:.3f})"
        table.append(
            [rank, row["name"], row["path"], row["mIoU"], row["pixel_acc"]]
            + [row["boundary_mIoU"], weakest]
        )
    return table


def split_iou(analysis: Analysis) -> tuple[np.ndarray, float]:
    """(IoU per class, mIoU) of the split, as ``segexp.model.metrics`` computes them."""
    import torch

    from segexp.model.metrics import confusion_scores

    scores = confusion_scores(torch.from_numpy(analysis.confmat))
    return scores["iou"].numpy(), float(scores["mIoU"])


def class_rows(analysis: Analysis) -> list[list[Any]]:
    """Class, labelled pixels, IoU, Boundary IoU and how much lower the boundary is."""
    iou, _ = split_iou(analysis)
    boundary, _ = analysis.boundary_iou()
    pixels = analysis.confmat.sum(1)
    return [
        [name, int(pixels[c]), float(iou[c]), float(boundary[c]), float(iou[c] - boundary[c])]
        for c, name in enumerate(analysis.class_names)
    ]


def render_analysis(
    analysis: Analysis, summary: dict[str, Any], folder: Path, title: str, html_rows: int
) -> str:
    """The analysis page of ``analysis`` (``summary``: its ``summary()`` plus ``worst``)."""
    boundary = summary["boundary"]
    total = len(analysis.rows)
    shown = min(total, html_rows)
    intro = (
        f"{total} images; mIoU {_score(split_iou(analysis)[1])}, pixel accuracy "
        f"{_score(summary['pixel_acc'])}, Boundary mIoU "
        f"{_score(boundary['mIoU'])} (band: {boundary['width']:.3g} of the image diagonal). "
        "Click a column header to sort. Every figure is also in per_image.csv and analysis.json."
    )
    worst = [
        figure(
            folder / entry["file"],
            f"#{entry['rank']} mIoU {_score(entry['mIoU'])}, pixel accuracy "
            f"{_score(entry['pixel_acc'])}: {entry['path']}",
        )
        for entry in summary["worst"]
    ]
    pairs = [[p["true"], p["predicted"], p["pixels"], p["share_of_true"]] for p in summary["pairs"]]
    ranges = summary["sizes"]["ranges"]
    sizes = [
        [s["class"], s["bucket"], ranges[s["bucket"]], s["objects"], s["recall"]]
        + [s["pixel_recall"]]
        for s in summary["sizes"]["table"]
    ]
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{html.escape(intro)}</p>',
        f"<h2>The {len(worst)} images of lowest mIoU</h2>",
        '<p class="muted">image | ground truth | prediction | errors (red wrong, grey right, '
        "white ignored)</p>",
        f'<div class="examples wide">{"".join(worst)}</div>'
        if worst
        else '<p class="muted">No image has a score.</p>',
        f"<h2>Per-image scores ({shown} of {total}, lowest mIoU first)</h2>",
        sortable_table("images", IMAGE_COLUMNS, image_rows(analysis, html_rows)),
        "<h2>Confused pairs</h2>",
        '<p class="muted">Pixels of the true class predicted as the other, and their share of '
        "the true class's labelled pixels.</p>",
        sortable_table("pairs", ("true", "predicted as", "pixels", "share of true"), pairs),
        "<h2>IoU and Boundary IoU per class</h2>",
        sortable_table(
            "classes",
            ("class", "pixels", "IoU", "boundary IoU", "IoU - boundary"),
            class_rows(analysis),
        ),  # fmt: skip
        "<h2>Recall by object size</h2>",
        '<p class="muted">Objects: connected regions of a class in the ground truth. Recall: '
        "the share of an object's pixels predicted as its class, averaged over objects; pixel "
        "recall pools their pixels.</p>",
        sortable_table(
            "sizes", ("class", "bucket", "area", "objects", "recall", "pixel recall"), sizes
        ),
    ]
    return page(title, sections)


def changes_section(changes: dict[str, Any] | None, top: int = 10) -> str:
    """The compare page's per-image changes between two evaluations (``image_changes``)."""
    if not changes:
        return ""
    base, other = changes["baseline"], changes["other"]
    intro = (
        f"{changes['matched']} images in both {base} (baseline) and {other}: "
        f"{changes['better']} better, {changes['worse']} worse by mIoU."
    )
    parts = [f'<p class="muted">{html.escape(intro)}</p>']
    for label, rows in (("better", changes["rows"][::-1]), ("worse", changes["rows"])):
        chosen = [r for r in rows if (r["change"] > 0) == (label == "better") and r["change"]]
        chosen = chosen[:top]
        parts.append(f"<h3>Most {label}</h3>")
        if not chosen:
            parts.append('<p class="muted">None.</p>')
            continue
        parts.append(
            sortable_table(
                f"changes-{label}",
                ("name", "path", f"mIoU {base}", f"mIoU {other}", "change"),
                [[r["name"], r["path"], r["base"], r["other"], r["change"]] for r in chosen],
            )  # fmt: skip
        )
        pictures = [
            figure(Path(file), f"{r['path']} in {run}: mIoU {_score(score)}")
            for r in chosen
            for run, file, score in r["pictures"]
        ]
        if pictures:
            parts.append(f'<div class="examples wide">{"".join(pictures)}</div>')
    return "".join(parts)
