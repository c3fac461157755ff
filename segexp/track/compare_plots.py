"""The comparison's plots: the metric against each varying parameter, and learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segexp.track.runs import format_value, is_number, metric_value, read_curve


def plot_metric_vs_params(
    runs: list[dict[str, Any]], params: Sequence[str], metric: str, path: Path
) -> Path | None:
    """One panel per varying parameter: the metric of every run against the parameter's value."""
    scored = [r for r in runs if metric_value(r, metric) is not None]
    if not params or not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, param in zip(axes[0], params):
        values = [r["params"].get(param) for r in scored]
        scores = [metric_value(r, metric) for r in scored]
        if all(is_number(v) for v in values):
            ax.scatter(values, scores)
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and max(values) / min(values) > 20:
                ax.set_xscale("log")  # learning rates and weight decays span decades
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels overlap
        else:
            categories = sorted({format_value(v) for v in values})
            positions = [categories.index(format_value(v)) for v in values]
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


def plot_learning_curves(
    runs: list[dict[str, Any]], metric: str, path: Path, top_k: int = 3, params: Sequence[str] = ()
) -> Path | None:
    """The metric and the training loss per epoch of the best ``top_k`` runs, labelled by ``params``."""
    best = [r for r in runs if metric_value(r, metric) is not None][:top_k]
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
        varied = ",".join(
            f"{p.split('.')[-1]}={format_value(run['params'].get(p))}" for p in params
        )
        label = f"{run['run']} {varied[:60]} ({metric_value(run, metric):.3f})"
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
