"""Look at augmented samples before training: a PNG grid of images and their masks overlaid.

    python -m segexp.browse data=voc data.root=/data/VOC2012 augment=strong augment.crop_size=320
    python -m segexp.browse augment=strong num=16 split=val out=grid.png

Each cell shows the augmented image and, beside it, the mask blended on it in the
VOC colour map (``segexp.data.viz``); ignore_index pixels are white. The config
(conf/browse.yaml) composes the same data and augment groups as ``segexp train``, so what
you see is what training gets (before normalisation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segexp.data.viz import overlay
from segexp.errors import UserError

STAGES = ("train", "val", "test")
ALPHA = 0.55  # weight of the class colour in the overlay


def fit_tile(array: np.ndarray, tile: int, resample) -> Image.Image:
    """Scale to fit a tile x tile square (aspect kept), on a grey background."""
    image = Image.fromarray(array)
    scale = tile / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample
    )
    canvas = Image.new("RGB", (tile, tile), (128, 128, 128))
    canvas.paste(image, (0, 0))
    return canvas


def render_grid(samples, ignore_index: int, tile: int = 192, columns: int = 4) -> Image.Image:
    """``samples``: (name, image (H, W, 3) uint8, mask (H, W)) -> the grid image."""
    rows = -(-len(samples) // columns)
    grid = Image.new("RGB", (columns * 2 * tile, rows * (tile + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (name, image, mask) in enumerate(samples):
        x, y = (i % columns) * 2 * tile, (i // columns) * (tile + 14)
        grid.paste(fit_tile(image, tile, Image.BILINEAR), (x, y + 14))
        grid.paste(
            fit_tile(
                overlay(image, mask, alpha=ALPHA, ignore_index=ignore_index), tile, Image.NEAREST
            ),
            (x + tile, y + 14),
        )
        labels = sorted(int(v) for v in np.unique(mask) if v != ignore_index)
        draw.text(
            (x + 2, y + 1),
            f"{name} {image.shape[1]}x{image.shape[0]} labels {labels[:8]}",
            fill=(0, 0, 0),
        )
    return grid


class BrowseError(UserError):
    """A browse request that cannot be drawn (bad num/split, empty split)."""


def browse(cfg, default_name: str = "grid") -> tuple[Path, int, str]:
    """Draw ``cfg.num`` augmented samples of ``cfg.split`` into ``cfg.out`` (default:
    ``<paths.output_dir>/<default_name>.png``). Returns (path, samples drawn, dataset split)."""
    import albumentations as A
    from hydra.utils import instantiate

    if cfg.split not in STAGES:
        raise BrowseError(f"split={cfg.split}: valid splits are {', '.join(STAGES)}.")
    if not isinstance(cfg.num, int) or cfg.num < 1:
        raise BrowseError(f"num={cfg.num}: give the number of samples to draw, e.g. num=8.")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # a generated dataset (shapes) is written first
    # The datamodule names the split (data.test_split: null picks test, else val).
    dataset = datamodule.raw_dataset(cfg.split)
    if len(dataset) == 0:
        raise BrowseError(
            f"split '{dataset.split}' (data.{cfg.split}_split) of data.root={cfg.data.root} is "
            "empty: nothing to show; pick another with split=train|val|test."
        )
    stage = cfg.augment.train if cfg.split == "train" else cfg.augment.val
    pipeline = A.Compose([instantiate(t) for t in stage], seed=int(cfg.seed))
    samples = []
    for i in range(cfg.num):
        index = i % len(dataset)
        image, mask = dataset.load(index)
        out = pipeline(image=image, mask=mask)
        samples.append((dataset.name(index), out["image"], np.asarray(out["mask"])))
    grid = render_grid(samples, int(cfg.data.ignore_index))
    path = Path(cfg.out) if cfg.out else Path(cfg.paths.output_dir) / f"{default_name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path, len(samples), str(dataset.split)
