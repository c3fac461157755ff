"""The evaluation analysis in the run folder: where and how ``segexp eval``'s model fails.

``EvalAnalysis`` is the Lightning callback ``segexp eval`` adds (``analysis.*`` keys of
``conf/eval.yaml``; ``analysis.enabled=false`` leaves it out). Each test batch's
predictions (what ``SegModule.test_step`` returns: the eval's inference mode, TTA and
post-processing included) go, image by image at the image's size before padding, to
``segexp.infer.analysis.Analysis``. At the end it writes next to metrics.json:

- ``per_image.csv``: one row per image (path, pixel accuracy, mIoU, Boundary mIoU, IoU
  of each class present);
- ``analysis.json``: confused pairs, Boundary IoU per class, recall by object size, the
  worst images;
- ``worst.png`` (one grid) and ``worst/NN_<name>.png``: the worst images as image |
  ground truth | prediction | errors, with their scores and names;
- ``analysis.html``: all of it on one self-contained page (``segexp.track.analysis_page``);

and adds ``test/boundary_mIoU`` and ``test/boundary_iou/<class>`` to the metrics.
Several processes: each analyses its own images and rank 0 merges and writes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from segexp.data.viz import denormalize
from segexp.infer.analysis import Analysis, WorstImage, object_classes

FAST_PNG = 1  # zlib level of the pictures: up to 3x faster to write than 6, files ~5 % larger


class EvalAnalysis(pl.Callback):
    """Per-image scores, worst images, confused pairs, Boundary IoU and object sizes.

    Args:
        enabled: false: the callback does nothing (``segexp eval`` then leaves it out).
        worst_k: how many of the lowest-mIoU images to draw.
        boundary_width: the Boundary IoU band, a fraction of the image diagonal.
        size_unit / size_thresholds: object size buckets (``segexp.infer.analysis.Analysis``).
        exclude: classes (names or ids) without objects; null: a class named background.
        top_pairs: rows of the confused-pairs table.
        html_rows: at most this many images (the worst) in the page's table; the CSV has all.
        dirpath: the run folder (default: the trainer's ``default_root_dir``).
        title: the page's heading.
    """

    def __init__(
        self,
        enabled: bool = True,
        worst_k: int = 8,
        boundary_width: float = 0.02,
        size_unit: str = "share",
        size_thresholds: tuple[float, float] = (0.01, 0.1),
        exclude: list[str | int] | None = None,
        top_pairs: int = 20,
        html_rows: int = 2000,
        dirpath: str | None = None,
        title: str = "evaluation",
    ) -> None:
        super().__init__()
        self.enabled = enabled
        self.settings = {
            "worst_k": int(worst_k),
            "boundary_width": float(boundary_width),
            "size_unit": size_unit,
            "size_thresholds": list(size_thresholds),
        }
        Analysis(["check"], **self.settings)  # a bad setting fails now, before any image
        self.exclude = None if exclude is None else list(exclude)
        self.top_pairs = int(top_pairs)
        self.html_rows = int(html_rows)
        self.dirpath = dirpath
        self.title = title
        self.analysis: Analysis | None = None
        self.files: list[Path] = []
        self.summary: dict[str, Any] = {}

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            names = list(pl_module.class_names)
            self.analysis = Analysis(
                names,
                int(pl_module.hparams.ignore_index),
                objects=object_classes(names, self.exclude),
                **self.settings,
            )

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.analysis is None or not isinstance(outputs, torch.Tensor):
            return
        predictions = outputs.cpu().numpy()
        masks = batch["mask"].cpu().numpy()
        images = batch["image"]
        mean, std = pl_module.hparams.mean, pl_module.hparams.std
        sizes = batch.get("size") or [mask.shape for mask in masks]
        paths = batch.get("path") or batch["name"]
        for i, (name, path, (height, width)) in enumerate(zip(batch["name"], paths, sizes)):
            if name == "" and "skipped" in batch:  # the all-ignore placeholder (pad_collate)
                continue

            def picture(i=i, height=height, width=width) -> np.ndarray:
                return denormalize(images[i : i + 1], mean, std)[0, :height, :width]

            self.analysis.add(
                predictions[i, :height, :width], masks[i, :height, :width], name, path, picture
            )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.analysis is None:
            return
        analysis = gather(self.analysis, trainer)
        if not trainer.is_global_zero:
            return
        per_class, mean = analysis.boundary_iou()
        metrics = {"test/boundary_mIoU": mean}
        metrics.update(
            {f"test/boundary_iou/{n}": v for n, v in zip(analysis.class_names, per_class)}
        )
        trainer.callback_metrics.update(
            {k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}
        )
        self.files, self.summary = write_analysis(
            analysis,
            Path(self.dirpath or trainer.default_root_dir),
            self.title,
            self.top_pairs,
            self.html_rows,
        )

    def report(self) -> str:
        """A few lines for the console: Boundary mIoU, the top confused pairs, the worst image."""
        if not self.summary:
            return ""
        boundary = self.summary["boundary"]["mIoU"]
        lines = [f"boundary mIoU (d = {self.settings['boundary_width']:g} of the diagonal): "]
        lines[0] += "n/a" if boundary is None else f"{boundary:.4f}"
        for pair in self.summary["pairs"][:3]:
            lines.append(
                f"confused: {pair['true']} -> {pair['predicted']}: {pair['pixels']} px "
                f"({pair['share_of_true']:.1%} of {pair['true']})"
            )
        for entry in self.summary["worst"][:1]:
            lines.append(f"worst image: {entry['path']} (mIoU {entry['mIoU']:.4f})")
        return "\n".join(lines)


def gather(analysis: Analysis, trainer: pl.Trainer) -> Analysis:
    """Every process's analysis merged (rank 0's first); the one process's as it is."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return analysis
    parts: list[Analysis | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(parts, analysis)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


def safe_name(text: str) -> str:
    """A file-name-safe form of an image name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "image"


def caption(rank: int, kept: WorstImage) -> str:
    row = kept.row
    acc = "n/a" if math.isnan(row["pixel_acc"]) else f"{row['pixel_acc']:.3f}"
    return f"#{rank} {row['name']}  mIoU {row['mIoU']:.3f}  pixel acc {acc}"


def draw_worst(analysis: Analysis, folder: Path) -> tuple[list[dict[str, Any]], Path | None]:
    """``worst/NN_<name>.png`` per image and ``worst.png`` with all of them (smaller images
    padded, white); returns (one entry per image, the grid's path)."""
    from segexp.track.pictures import example_grid, save_png

    worst = analysis.worst()
    entries, strips = [], []
    names, ignore = analysis.class_names, analysis.ignore_index
    for rank, kept in enumerate(worst, start=1):
        strip = example_grid(
            kept.image[None], kept.target[None], kept.prediction[None], names, ignore,
            errors=True, captions=[caption(rank, kept)],
        )  # fmt: skip
        name = f"{rank:02d}_{safe_name(kept.row['name'])}.png"
        file = save_png(strip, folder / "worst" / name, FAST_PNG)
        strips.append(file)
        row = kept.row
        entries.append(
            {
                "rank": rank,
                "name": row["name"],
                "path": row["path"],
                "mIoU": row["mIoU"],
                "pixel_acc": None if math.isnan(row["pixel_acc"]) else row["pixel_acc"],
                "file": str(file.relative_to(folder)),
            }
        )
    if not worst:
        return entries, None
    height = max(k.target.shape[0] for k in worst)
    width = max(k.target.shape[1] for k in worst)

    def pad(array: np.ndarray, value: int) -> np.ndarray:
        spare = [(0, height - array.shape[0]), (0, width - array.shape[1])]
        return np.pad(array, spare + [(0, 0)] * (array.ndim - 2), constant_values=value)

    grid = example_grid(
        np.stack([pad(k.image, 255) for k in worst]),
        np.stack([pad(k.target, ignore) for k in worst]),
        np.stack([pad(k.prediction, ignore) for k in worst]),
        names, ignore, title=f"the {len(worst)} images of lowest mIoU", errors=True,
        captions=[caption(rank, k) for rank, k in enumerate(worst, start=1)],
    )  # fmt: skip
    return entries, save_png(grid, folder / "worst.png", FAST_PNG)


def write_analysis(
    analysis: Analysis, folder: Path, title: str, top_pairs: int = 20, html_rows: int = 2000
) -> tuple[list[Path], dict[str, Any]]:
    """Write the analysis files (module doc) into ``folder``; return (files, the summary)."""
    from segexp.run.rundir import write_json, write_text
    from segexp.track.analysis_page import render_analysis

    files = [analysis.write_csv(folder / "per_image.csv")]
    summary = analysis.summary(top_pairs)
    summary["worst"], grid = draw_worst(analysis, folder)
    files.append(write_json(folder / "analysis.json", summary))
    files += [grid] if grid else []
    page = render_analysis(analysis, summary, folder, title, html_rows)
    files.append(write_text(folder / "analysis.html", page))
    return files, summary
