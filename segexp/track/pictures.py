"""The pictures every run leaves in its folder, whatever its logger.

``example_grid`` draws validation images as rows of image | ground truth | prediction (and,
for the evaluation analysis, an error map and a caption per row) with a legend of the
classes shown (the colours of ``segexp.data.viz``); ``SegImageLogger``
(``segexp.track.callbacks``) saves it as ``val/examples/epoch_NNN.png`` and sends the same
grid to W&B, TensorBoard and MLflow. ``plot_curves`` draws ``curves.png`` (losses, val
mIoU, learning rate per epoch). Confusion matrices are ``segexp.run.report``'s.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

EXAMPLES_SUBDIR = Path("val") / "examples"  # in a run folder: epoch_NNN.png
COLUMNS = ("image", "ground truth", "prediction")
ERRORS_COLUMN = "errors"  # right / wrong / ignored (segexp.data.viz.error_map)
MIN_TILE = 128  # small images are enlarged (nearest neighbour) to at least this width
GAP = 4  # pixels between tiles
HEADER = 22  # height of the column titles
CAPTION = 18  # height of a row's caption
SWATCH = 14  # side of a legend colour square
LEGEND_ROW = 20  # height of one legend line
BACKGROUND = (255, 255, 255)
ALPHA = 0.6  # how much of a mask colour covers the image


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def tile_scale(width: int) -> int:
    """The integer factor that brings an image of ``width`` pixels to at least ``MIN_TILE``."""
    return max(1, math.ceil(MIN_TILE / max(width, 1)))


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else array.repeat(factor, axis=0).repeat(factor, axis=1)


def legend_entries(
    labels: Sequence[np.ndarray], class_names: Sequence[str], ignore_index: int | None
) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, RGB) of each class present in ``labels``, in class order; "ignore" last."""
    from segexp.data.viz import IGNORE_COLOUR, palette  # torch: imported only when drawing

    colours = palette(max(len(class_names), 1))
    present = set()
    for label in labels:
        present.update(int(v) for v in np.unique(label))
    entries = [
        (name, tuple(int(c) for c in colours[index]))
        for index, name in enumerate(class_names)
        if index in present
    ]
    if ignore_index is not None and int(ignore_index) in present:
        entries.append(("ignore", IGNORE_COLOUR))
    return entries


def example_grid(
    images: np.ndarray,
    masks: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int | None = None,
    title: str = "",
    errors: bool = False,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """One row per image: image | ground truth | prediction, then a legend: (H, W, 3) uint8.

    ``images`` is (B, H, W, 3) uint8 RGB, ``masks`` and ``predictions`` (B, H, W) class
    indices. Masks are drawn over the image in the class colours; ignored pixels white.
    ``errors`` adds a fourth column, the error map (right green, wrong red, ignored
    white); ``captions`` puts one line of text above each row.
    """
    from PIL import Image, ImageDraw

    from segexp.data.viz import ERROR_COLOURS, error_map, overlay, palette

    images, masks, predictions = np.asarray(images), np.asarray(masks), np.asarray(predictions)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"example_grid: images must be (B, H, W, 3) with B > 0, got {images.shape}"
        )
    count, height, width = images.shape[:3]
    factor = tile_scale(width)
    tile_h, tile_w = height * factor, width * factor
    colours = palette(max(len(class_names), 1))
    entries = legend_entries([masks, predictions], class_names, ignore_index)
    columns = (*COLUMNS, ERRORS_COLUMN) if errors else COLUMNS
    if errors:
        entries += list(ERROR_COLOURS.items())
    caption_h = CAPTION if captions else 0
    row_h = caption_h + tile_h + GAP

    grid_w = len(columns) * tile_w + (len(columns) + 1) * GAP
    font = _font()
    # The legend wraps onto as many lines as the grid's width needs.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, line, used = [], [], GAP
    for name, colour in entries:
        item_w = SWATCH + 4 + int(probe.textlength(name, font=font)) + 12
        if line and used + item_w > grid_w:
            lines.append(line)
            line, used = [], GAP
        line.append((name, colour, item_w))
        used += item_w
    if line:
        lines.append(line)
    top = HEADER + (HEADER if title else 0)
    grid_h = top + count * row_h + len(lines) * LEGEND_ROW + GAP

    canvas = Image.new("RGB", (grid_w, grid_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((GAP, 4), title, fill=(0, 0, 0), font=font)
    for column, name in enumerate(columns):
        draw.text(
            (GAP + column * (tile_w + GAP), top - HEADER + 4), name, fill=(0, 0, 0), font=font
        )
    for row in range(count):
        y = top + row * row_h
        if captions:
            draw.text((GAP, y + 2), captions[row], fill=(0, 0, 0), font=font)
            y += caption_h
        image = images[row]
        tiles = [
            image,
            overlay(image, masks[row], colours, ALPHA, ignore_index),
            overlay(image, predictions[row], colours, ALPHA, ignore_index),
        ]
        if errors:
            tiles.append(error_map(image, masks[row], predictions[row], ignore_index))
        for column, tile in enumerate(tiles):
            x = GAP + column * (tile_w + GAP)
            canvas.paste(Image.fromarray(_enlarge(tile, factor)), (x, y))
    y = top + count * row_h
    for line in lines:
        x = GAP
        for name, colour, item_w in line:
            top_s = y + (LEGEND_ROW - SWATCH) // 2
            draw.rectangle(
                (x, top_s, x + SWATCH, top_s + SWATCH), fill=colour, outline=(128, 128, 128)
            )
            draw.text((x + SWATCH + 4, y + 3), name, fill=(0, 0, 0), font=font)
            x += item_w
        y += LEGEND_ROW
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str | os.PathLike, compress_level: int = 6) -> Path:
    """Write an (H, W, 3) uint8 picture as PNG, atomically (a reader never sees half a file).

    ``compress_level``: zlib's 0-9 (PIL's default 6); 1 writes several times faster."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    picture = Image.fromarray(np.asarray(array, dtype=np.uint8))
    picture.save(buffer, format="PNG", compress_level=compress_level)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


# The curves: what is drawn where (panel title, [(history key, line label)]).
CURVE_PANELS = (
    ("loss", (("train/loss", "train"), ("val/loss", "val"))),
    ("val mIoU", (("val/mIoU", "val"),)),
    ("learning rate", (("lr", "lr"),)),
)


def plot_curves(history: Mapping[int, Mapping[str, float]], path: str | os.PathLike) -> Path | None:
    """``curves.png``: train/val loss, val mIoU and learning rate per epoch.

    ``history`` maps the epoch (0-based, as Lightning counts) to the values recorded in it
    (keys ``train/loss``, ``val/loss``, ``val/mIoU``, ``lr``). None when nothing was recorded.
    """
    epochs = sorted(history)
    if not any(history[e] for e in epochs):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4 * len(CURVE_PANELS), 3.2))
    for ax, (title, lines) in zip(axes, CURVE_PANELS):
        for key, label in lines:
            points = [
                (e, history[e][key])
                for e in epochs
                if key in history[e] and math.isfinite(history[e][key])
            ]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(lines) > 1 and ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path
