"""The embedded default dataset: generated scenes of overlapping shapes.

Scenes are drawn deterministically from a seed and written once in the plain
folder layout (``images/{split}``, ``masks/{split}``, ``classes.txt``), so the
default run exercises the same loader that real data uses. The folder holds a
``shapes.json`` with the generation parameters; it is regenerated only when
they change.

What makes it a real (small) segmentation problem rather than a colour lookup:
object colours are drawn from the same distribution as the background, the
background is textured (smooth colour field + blotches + pixel noise), objects
overlap and occlude each other, vary in size and rotation, and two classes
(``circle`` and ``ring``) differ only in whether they are filled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "ring")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 3  # bump when the drawing code changes, so caches regenerate


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random RGB field in [0, 1]: coarse noise upsampled bicubically. (H, W, 3)"""
    coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    return np.asarray(field, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background: a base colour + coarse and finer blotches. (H, W, 3) float in [0, 1]

    The texture is strong enough that thresholding a colour does not find the
    objects, but weaker than the object/background contrast (see _visible_colour),
    so telling shapes apart, not finding them, is what the model has to learn.
    """
    base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    image = base + 0.45 * (_smooth_field(rng, size, int(rng.integers(2, 5))) - 0.5)
    image += 0.25 * (_smooth_field(rng, size, int(rng.integers(8, 16))) - 0.5)
    return np.clip(image, 0.0, 1.0)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.cos(angle + i * step), cy + r * math.sin(angle + i * step))
        for i, r in enumerate(radii)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx, cy, radius, angle, aspect, fill) -> None:
    """Draw one shape with ``fill`` (an RGB tuple on the image, a class id on the mask)."""
    if kind == "circle":
        rx, ry = radius, radius * aspect
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    elif kind == "ring":
        rx, ry = radius, radius * aspect
        width = max(2, int(radius * 0.35))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=fill, width=width)
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, [radius] * 4, angle), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, [radius] * 3, angle), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, [radius, radius * 0.45] * 5, angle), fill=fill)
    else:  # pragma: no cover - CLASS_NAMES and this function change together
        raise ValueError(f"unknown shape kind {kind!r}")


def _visible_colour(rng, background, cx, cy, radius, min_distance=90.0, tries=20):
    """A random colour that stands out from the background around the object.

    Colours come from the same distribution as the background's, so colour
    alone does not give the class; the contrast check only keeps objects visible.
    """
    size = background.shape[0]
    x0, x1 = int(max(0, cx - radius)), int(min(size, cx + radius + 1))
    y0, y1 = int(max(0, cy - radius)), int(min(size, cy + radius + 1))
    local = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0) * 255
    colour = rng.integers(0, 256, size=3)
    for _ in range(tries):
        if np.linalg.norm(colour - local) >= min_distance:
            break
        colour = rng.integers(0, 256, size=3)
    return tuple(int(c) for c in colour)


def draw_scene(seed: int, image_size: int, max_objects: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One scene from its seed: (image (H, W, 3) uint8, mask (H, W) uint8 class ids)."""
    rng = np.random.default_rng(seed)
    background = _background(rng, image_size)
    canvas = Image.fromarray((background * 255).astype(np.uint8))
    mask = Image.new("L", (image_size, image_size), 0)
    draw_image, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)

    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.integers(1, len(CLASS_NAMES)))
        radius = float(rng.uniform(0.12, 0.26) * image_size)
        cx, cy = rng.uniform(0.1, 0.9, size=2) * image_size
        angle = float(rng.uniform(0, 2 * math.pi))
        aspect = float(rng.uniform(0.7, 1.0))
        colour = _visible_colour(rng, background, cx, cy, radius)
        shape = (CLASS_NAMES[class_id], cx, cy, radius, angle, aspect)
        _draw_shape(draw_image, *shape, fill=colour)
        _draw_shape(draw_mask, *shape, fill=class_id)

    # Texture on top of everything so objects are not flat colour patches either.
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 0.8))))
    image = np.asarray(canvas, dtype=np.float32)
    image += rng.normal(0, 8, size=image.shape)
    image += 25 * (_smooth_field(rng, image_size, 24) - 0.5)
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(mask, dtype=np.uint8)


def generate_shapes(
    root: str | os.PathLike,
    num_train: int = 400,
    num_val: int = 80,
    num_test: int = 80,
    image_size: int = 128,
    max_objects: int = 5,
    seed: int = 0,
) -> Path:
    """Write the shapes dataset to ``root`` unless it is already there with these parameters.

    The dataset is written to a temporary folder beside ``root`` and moved into
    place in one step, so an interrupted generation never leaves a half-written
    dataset that looks complete.
    """
    root = Path(root)
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "image_size": image_size,
        "max_objects": max_objects,
        "seed": seed,
        "format_version": FORMAT_VERSION,
    }
    stamp = root / "shapes.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    if root.exists() and not stamp.is_file():
        raise FileExistsError(
            f"data.root={root} exists but holds no shapes.json, so it is not a generated "
            "shapes dataset; refusing to overwrite it. Point data.root at an empty or "
            "new folder (or delete this one)."
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split_index, split in enumerate(SPLITS):
        (staging / "images" / split).mkdir(parents=True)
        (staging / "masks" / split).mkdir(parents=True)
        for index in range(counts[split]):
            # Disjoint seeds per split and per dataset seed.
            scene_seed = seed * 10_000_019 + split_index * 1_000_003 + index
            image, mask = draw_scene(scene_seed, image_size, max_objects)
            name = f"{index:05d}.png"
            Image.fromarray(image).save(staging / "images" / split / name)
            Image.fromarray(mask).save(staging / "masks" / split / name)
    (staging / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    (staging / "shapes.json").write_text(json.dumps(params, indent=2) + "\n")

    if root.exists():
        shutil.rmtree(root)
    os.replace(staging, root)
    return root
