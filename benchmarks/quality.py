"""Figure 6: quality per minute. Val mIoU the default recipe reaches after 1, 2 and 5 minutes.

Each recipe runs as ``python train.py`` (so exactly what ``make train`` runs, loggers,
per-epoch validation and checkpoints included) with one extra callback,
BudgetCurve: at each time mark it pauses the clock, scores the model on the val
split in eval mode, and after the last mark stops the run. A recipe that ends
before a mark is scored at its end (``finished`` in the JSON says when).

The clock starts at the first training step (start-up is figure 4). ``--clock cpu``
measures CPU time of the process and its loader workers divided by the core
count: equal to wall time on a quiet machine that keeps its cores busy, and a
fair budget on a shared one (with OpenMP's passive wait, so spinning threads of an
oversubscribed machine are not counted as training). ``--candidates`` also runs the CANDIDATES below so
the default can be picked by mIoU at 5 minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from benchmarks.harness import Figure, Settings, clock, python, run_checked

MARKS_S = (60, 120, 300)
QUICK_MARKS_S = (2, 4)
# Label -> overrides on top of the configured default. Cheaper networks do more steps per minute.
CANDIDATES = {
    "default": [],
    "unet (stride 32, 14M params)": ["model=unet"],
    "unet, cross-entropy": ["model=unet", "loss=ce"],
    "default, cross-entropy": ["loss=ce"],
    "fpn-mobilenet_v2": ["model=fpn", "model.encoder_name=mobilenet_v2"],
    "deeplabv3plus-r18": ["model=deeplabv3plus"],
    "default, lr 3e-3": ["optimizer.lr=0.003"],
    "default, batch 8": ["data.batch_size=8"],
}
READ_THIS = 0.75  # the README's promise for `make train` (test mIoU); val mIoU checked here


def val_miou(module: pl.LightningModule, loader, num_classes: int, ignore_index: int) -> float:
    """mIoU of ``module`` on ``loader`` in eval mode (segexp.model.metrics' definition)."""
    from segexp.model.metrics import confusion_scores

    confmat = torch.zeros(num_classes, num_classes, dtype=torch.long)
    was_training = module.training
    module.eval()
    with torch.inference_mode():
        for batch in loader:
            pred = module(batch["image"].to(module.device)).argmax(dim=1).cpu()  # (B, H, W)
            target = batch["mask"]
            valid = target != ignore_index
            index = target[valid] * num_classes + pred[valid]
            confmat += torch.bincount(index, minlength=num_classes**2).view(
                num_classes, num_classes
            )
    module.train(was_training)
    return float(confusion_scores(confmat)["mIoU"])


class BudgetCurve(pl.Callback):
    """Scores the model at elapsed-time marks (seconds of training) and stops after the last.

    Args:
        marks: seconds of training at which to score, ascending.
        out: JSON file the points are written to (rewritten after each point).
        clock: "wall" or "cpu" (see benchmarks.harness.process_tree_seconds).
    """

    def __init__(self, marks: list[float], out: str, clock: str = "wall") -> None:
        self.marks = sorted(float(m) for m in marks)
        self.out = Path(out)
        self.clock_kind = clock
        self.points: list[dict] = []
        self.paused = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.now = clock(self.clock_kind)
        self.started = self.now()

    def elapsed(self) -> float:
        return self.now() - self.started - self.paused

    def _score(self, trainer, pl_module, mark: float, finished: bool) -> None:
        elapsed = self.elapsed()
        began = self.now()
        datamodule = trainer.datamodule
        miou = val_miou(
            pl_module, datamodule.val_dataloader(), datamodule.num_classes, datamodule.ignore_index
        )
        self.paused += self.now() - began
        self.points.append(
            {
                "mark_s": mark,
                "elapsed_s": round(elapsed, 1),
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "val_mIoU": miou,
                "finished": finished,
            }
        )
        self.out.write_text(json.dumps({"clock": self.clock_kind, "points": self.points}, indent=1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while len(self.points) < len(self.marks) and self.elapsed() >= self.marks[len(self.points)]:
            self._score(trainer, pl_module, self.marks[len(self.points)], finished=False)
        if len(self.points) == len(self.marks):
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        # The recipe ended before the last mark: what it reached is its score at every later mark.
        if len(self.points) < len(self.marks):
            self._score(trainer, pl_module, self.marks[len(self.points)], finished=True)
            done = self.points[-1]
            for mark in self.marks[len(self.points) :]:
                self.points.append({**done, "mark_s": mark})
            self.out.write_text(
                json.dumps({"clock": self.clock_kind, "points": self.points}, indent=1)
            )


def select(candidates: str) -> dict[str, list[str]]:
    """The recipes to run: the default, plus "all" CANDIDATES or the comma-listed ones."""
    if not candidates:
        return {"default": []}
    if candidates == "all":
        return dict(CANDIDATES)
    labels = [label.strip() for label in candidates.split(",") if label.strip()]
    unknown = [label for label in labels if label not in CANDIDATES]
    if unknown:
        raise ValueError(
            f"--candidates: unknown {unknown}; valid: all, {', '.join(CANDIDATES)} "
            "(add a recipe to benchmarks.quality.CANDIDATES)"
        )
    return {"default": [], **{label: CANDIDATES[label] for label in labels}}


def run_recipe(settings: Settings, label: str, overrides: list[str], marks) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in label)
    out = settings.out_dir / f"quality-{slug}.json"
    out.unlink(missing_ok=True)
    began = time.perf_counter()
    run_checked(
        [
            python(),
            "train.py",
            *settings.overrides(overrides),
            "test=false",
            f"hydra.run.dir={settings.out_dir / ('quality-run-' + slug)}",
            "+callbacks.budget._target_=benchmarks.quality.BudgetCurve",
            f"+callbacks.budget.marks=[{','.join(str(m) for m in marks)}]",
            f"+callbacks.budget.out={out}",
            f"+callbacks.budget.clock={settings.clock}",
        ],
        # OpenMP threads that spin while waiting burn CPU time that is not work when the
        # machine is oversubscribed; a passive wait keeps the CPU clock close to the work done.
        extra_env={"OMP_WAIT_POLICY": "PASSIVE"} if settings.clock == "cpu" else None,
    )
    curve = json.loads(out.read_text())
    curve.update(label=label, overrides=overrides, wall_s=round(time.perf_counter() - began, 1))
    return curve


def plot(
    curves: list[dict],
    path: Path,
    clock_kind: str,
    title: str = "segexp on shapes: quality per minute",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for curve in curves:
        points = curve["points"]
        # A recipe that ended before a mark is drawn where it ended, not at the mark.
        ax.plot(
            [0] + [min(p["mark_s"], p["elapsed_s"]) / 60 for p in points],
            [0] + [p["val_mIoU"] for p in points],
            marker="o",
            label=curve["label"],
        )
    ax.axhline(READ_THIS, color="grey", linestyle=":", linewidth=1)
    unit = "CPU-minutes / cores" if clock_kind == "cpu" else "minutes (wall)"
    ax.set(
        xlabel=f"training time, {unit}",
        ylabel="val mIoU",
        ylim=(0, 1),
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(settings: Settings) -> list[Figure]:
    marks = QUICK_MARKS_S if settings.quick else MARKS_S
    chosen = select(settings.candidates)
    curves = [run_recipe(settings, label, overrides, marks) for label, overrides in chosen.items()]
    png = settings.out_dir / "quality_per_minute.png"
    plot(curves, png, settings.clock)
    settings.cache["quality_curves"] = curves

    figures = []
    for curve in curves:
        for point in curve["points"]:
            note = f"step {point['step']}, epoch {point['epoch']}"
            if point["finished"]:
                note += f", recipe finished at {point['elapsed_s'] / 60:.1f} min"
            figures.append(
                Figure(
                    f"{curve['label']}: val mIoU @ {point['mark_s'] / 60:g} min",
                    point["val_mIoU"],
                    "",
                    note=note,
                )
            )
    default = curves[0]["points"][-1]
    if not settings.quick:
        figures.append(
            Figure(
                "default recipe: val mIoU at 5 min",
                default["val_mIoU"],
                "",
                f">= {READ_THIS}",
                note=f"{settings.clock} clock",
            )
        )
    figures.append(Figure("plot", None, "", note=str(png)))
    return figures
