"""Console summaries of a run's metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def _fmt(value: float | None) -> str:
    return "  n/a " if value is None or math.isnan(value) else f"{value:6.4f}"


def format_table(metrics: Mapping[str, float], class_names: Sequence[str], stage: str) -> str:
    """mIoU / pixel accuracy / mean accuracy, then IoU per class, as aligned text."""
    lines = [f"{'metric':<24} {'value':>8}"]
    for key in ("mIoU", "pixel_acc", "mean_acc", "loss"):
        name = f"{stage}/{key}"
        if name in metrics:
            lines.append(f"{name:<24} {_fmt(metrics[name]):>8}")
    per_class = [(name, metrics.get(f"{stage}/iou/{name}")) for name in class_names]
    if any(value is not None for _, value in per_class):
        lines.append(f"{'class':<24} {'IoU':>8}")
        lines += [f"  {name:<22} {_fmt(value):>8}" for name, value in per_class]
    return "\n".join(lines)


def print_summary(
    metrics: Mapping[str, float], run_dir: Path, class_names: Sequence[str], stage: str
) -> None:
    print("\n" + format_table(metrics, class_names, stage))
    print(f"\nrun folder: {Path(run_dir).resolve()}")
    print(f"metrics:    {Path(run_dir).resolve() / 'metrics.json'}")
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.exists():
        print(f"checkpoint: {last.resolve()}")
