"""Metric reports: the one metric table (segexp train's summary, segexp eval's report), the
confusion matrix as CSV and as a PNG plot."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segexp.model.metrics import PER_CLASS_KEYS, SUMMARY_KEYS

SUMMARY_LABELS = {
    "mIoU": "mean IoU",
    "pixel_acc": "pixel accuracy (aAcc)",
    "mean_acc": "mean class accuracy (mAcc)",
    "mean_dice": "mean Dice",
    "fw_iou": "frequency-weighted IoU",
    "loss": "loss",
}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def format_report(
    metrics: Mapping[str, float],
    class_names: Sequence[str],
    stage: str,
    confmat: np.ndarray | None = None,
) -> str:
    """The summary figures, then one row per class (IoU, accuracy, Dice, target pixels).

    The class rows are left out when ``metrics`` has no per-class score and no ``confmat``
    is given.
    """
    lines = [f"{'metric':<30} {'key':<18} {'value':>8}"]
    for key in (*SUMMARY_KEYS, "loss"):
        name = f"{stage}/{key}"
        if name in metrics:
            lines.append(f"{SUMMARY_LABELS[key]:<30} {name:<18} {_fmt(metrics[name]):>8}")
    per_class = any(
        f"{stage}/{key}/{name}" in metrics for key in PER_CLASS_KEYS for name in class_names
    )
    if confmat is None and not per_class:
        return "\n".join(lines)
    width = max([5, *(len(n) for n in class_names)])
    header = f"{'class':<{width}} " + " ".join(f"{k:>8}" for k in ("IoU", "acc", "Dice"))
    if confmat is not None:
        header += f" {'pixels':>10}"
    lines += ["", header]
    for index, name in enumerate(class_names):
        row = f"{name:<{width}} " + " ".join(
            f"{_fmt(metrics.get(f'{stage}/{key}/{name}')):>8}" for key in PER_CLASS_KEYS
        )
        if confmat is not None:
            row += f" {int(confmat[index].sum()):>10}"
        lines.append(row)
    if any("n/a" in line for line in lines):
        lines.append(
            "(n/a: the class is in neither prediction nor target (IoU, Dice) or not in the target (acc))"
        )
    return "\n".join(lines)


def print_summary(
    metrics: Mapping[str, float], run_dir: str | os.PathLike, class_names: Sequence[str], stage: str
) -> None:
    """segexp train's closing words: the metric table, then where the run's files are."""
    run_dir = Path(run_dir).resolve()
    print("\n" + format_report(metrics, class_names, stage))
    print(f"\nrun folder: {run_dir}")
    print(f"metrics:    {run_dir / 'metrics.json'}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        print(f"checkpoint: {last}")


def write_confusion_csv(
    confmat: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Pixel counts, rows = target class, columns = predicted class, with names as headers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confmat = np.asarray(confmat)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target \\ predicted", *class_names])
        for name, row in zip(class_names, confmat):
            writer.writerow([name, *(int(v) for v in row)])
    return path


def read_confusion_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """The inverse of ``write_confusion_csv``: (class names, (C, C) int64 counts)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    names = rows[0][1:]
    return names, np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64)


def plot_confusion(
    confmat: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """A PNG heat map of the row-normalised confusion matrix (each target row sums to 1)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confmat = np.asarray(confmat, dtype=np.float64)
    rows = confmat.sum(axis=1, keepdims=True)
    normalised = np.divide(confmat, rows, out=np.zeros_like(confmat), where=rows > 0)
    count = len(class_names)
    side = min(4 + 0.45 * count, 30)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the target class")
    ax.set_xticks(range(count), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(count), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("target class")
    ax.set_title(title or "confusion matrix (rows normalised)")
    if count <= 25:  # beyond that the numbers no longer fit in the cells
        for i in range(count):
            for j in range(count):
                if rows[i, 0] > 0:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{normalised[i, j]:.2f}",
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=8,
                    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
