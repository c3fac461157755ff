"""Figure 7: transfer. Val mIoU on a small second dataset after N epochs, from scratch vs
``init_from=`` a model trained on the shapes data.

The second dataset ("marks") is written here: 96 px images (the shapes data is 64 px),
4 classes (background, cross, hexagon, crescent: none of them a shapes class) drawn in
muted colours on a striped background, and only 48 training images, the setting where
starting from another dataset's weights should pay. The source model is the default
recipe trained on the shapes data to its end (what ``make train`` gives; a source trained
for 3 epochs, val mIoU 0.23, gave +0.01 only); both target runs are the default
recipe on "marks" with the same seed, differing only in ``init_from=`` (the 6-class head
does not fit the 4 classes and keeps its fresh init; everything else is loaded). Every
run is ``python train.py``, exactly what a user runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from benchmarks.harness import Figure, Settings, python, run_checked, write_folder_dataset

CLASSES = ("background", "cross", "hexagon", "crescent")
SOURCE_EPOCHS, QUICK_SOURCE_EPOCHS = 28, 1  # 28: the default recipe's own length
TARGET_EPOCHS, QUICK_TARGET_EPOCHS = 10, 1
COUNTS = {"train": 48, "val": 24}
QUICK_COUNTS = {"train": 8, "val": 4}
SIZE, QUICK_SIZE = 96, 64
TARGET = ">= 0.05"  # val mIoU points gained by starting from the shapes model


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """A background of soft diagonal stripes in two muted colours. (H, W, 3) float"""
    a, b = rng.uniform(60, 170, size=(2, 3))
    period = rng.uniform(6, 18)
    angle = rng.uniform(0, math.pi)
    y, x = np.mgrid[0:size, 0:size]
    wave = 0.5 + 0.5 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period)
    return a * wave[..., None] + b * (1 - wave[..., None])


def draw_mark(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One "marks" scene: (image (H, W, 3) uint8, mask (H, W) uint8 in 0..3)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(np.clip(_stripes(rng, size), 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(CLASSES)))
        radius = float(rng.uniform(0.12, 0.25) * size)
        cx, cy = rng.uniform(radius, size - radius, size=2)
        layer = Image.new("L", (size, size), 0)  # where this object is
        draw = ImageDraw.Draw(layer)
        if kind == 1:  # cross: two bars
            bar = radius * 0.35
            draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=255)
            draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=255)
        elif kind == 2:  # hexagon
            angle = rng.uniform(0, math.pi / 3)
            step = math.pi / 3
            draw.polygon(
                [
                    (
                        cx + radius * math.cos(angle + i * step),
                        cy + radius * math.sin(angle + i * step),
                    )
                    for i in range(6)
                ],
                fill=255,
            )
        else:  # crescent: a disc minus an offset disc
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
            off = radius * rng.uniform(0.4, 0.6)
            draw.ellipse((cx - radius + off, cy - radius, cx + radius + off, cy + radius), fill=0)
        colour = tuple(int(c) for c in rng.uniform(0, 255, size=3) * 0.6 + 50)  # muted
        image.paste(colour, (0, 0, size, size), layer)
        mask.paste(kind, (0, 0, size, size), layer)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), np.asarray(mask, dtype=np.uint8)


def write_marks(root: Path, counts: dict[str, int], size: int) -> Path:
    """The "marks" dataset in the folder layout (docs/data.md)."""
    return write_folder_dataset(root, counts, lambda seed: draw_mark(seed, size), CLASSES, 10_000)


def train_run(settings: Settings, name: str, overrides: list[str]) -> Path:
    run_dir = settings.out_dir / f"transfer-{name}"
    run_checked(
        [
            python(),
            "train.py",
            *overrides,
            "logger=none",
            "test=false",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ]
    )
    return run_dir


def run(settings: Settings) -> list[Figure]:
    quick = settings.quick
    source_epochs = QUICK_SOURCE_EPOCHS if quick else SOURCE_EPOCHS
    epochs = QUICK_TARGET_EPOCHS if quick else TARGET_EPOCHS
    counts = {**(QUICK_COUNTS if quick else COUNTS), "test": 2}
    root = write_marks(settings.out_dir / "transfer-marks", counts, QUICK_SIZE if quick else SIZE)

    source = train_run(
        settings, "source", settings.overrides([f"trainer.max_epochs={source_epochs}"])
    )
    ckpt = source / "checkpoints" / "last.ckpt"
    target = [
        "data=folder",
        f"data.root={root}",
        f"data.num_classes={len(CLASSES)}",
        "data.batch_size=4",
        f"trainer.max_epochs={epochs}",
        f"paths.data_dir={settings.data_dir}",
    ]
    scores = {}
    for name, extra in (("scratch", []), ("init_from", [f"init_from={ckpt}"])):
        run_dir = train_run(settings, name, [*target, *extra])
        scores[name] = json.loads((run_dir / "metrics.json").read_text())["val/mIoU"]
    info = json.loads((settings.out_dir / "transfer-init_from" / "run_info.json").read_text())
    loaded = info["init_from"]["loaded"]
    skipped = len(info["init_from"]["shape_mismatch"])
    settings.cache["transfer"] = scores
    detail = f"{counts['train']} train images, {epochs} epochs"
    return [
        Figure(f"from scratch: val mIoU after {epochs} epochs", scores["scratch"], "", note=detail),
        Figure(
            f"init_from shapes model ({source_epochs} epochs): val mIoU after {epochs} epochs",
            scores["init_from"],
            "",
            note=f"{loaded} tensors loaded, {skipped} head tensors kept fresh",
        ),
        Figure(
            "gain from init_from (val mIoU points)",
            scores["init_from"] - scores["scratch"],
            "",
            "" if quick else TARGET,
            note="same seed and recipe",
        ),
    ]
