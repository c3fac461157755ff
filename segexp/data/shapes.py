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

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segexp.errors import UserError

CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "ring")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 5  # bump when the drawing code changes, so caches regenerate


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


def draw_scene(
    seed: int,
    image_size: int,
    max_objects: int = 4,
    radius_range: tuple[float, float] = (0.15, 0.30),
    min_visible: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene from its seed: (image (H, W, 3) uint8, mask (H, W) uint8 class ids).

    ``radius_range``: object radii as fractions of ``image_size``; smaller objects make the
    classes harder to tell apart (a 8 px triangle and star differ by a few pixels).
    ``min_visible``: objects overlap, but a new object is placed only where every earlier
    one keeps at least this fraction of its area visible; lower is harder (a triangle with
    only its tip showing cannot be told from a star's).
    """
    rng = np.random.default_rng(seed)
    background = _background(rng, image_size)
    canvas = Image.fromarray((background * 255).astype(np.uint8))
    mask = Image.new("L", (image_size, image_size), 0)
    draw_image, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    placed: list[tuple[np.ndarray, int]] = []  # (visible pixels, drawn area) of each object

    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.integers(1, len(CLASS_NAMES)))
        for _attempt in range(10):
            radius = float(rng.uniform(*radius_range) * image_size)
            # Centres keep most of the object inside the frame.
            cx, cy = rng.uniform(0.6 * radius, image_size - 0.6 * radius, size=2)
            angle = float(rng.uniform(0, 2 * math.pi))
            aspect = float(rng.uniform(0.7, 1.0))
            shape = (CLASS_NAMES[class_id], cx, cy, radius, angle, aspect)
            layer = Image.new("1", (image_size, image_size), 0)
            _draw_shape(ImageDraw.Draw(layer), *shape, fill=1)
            own = np.asarray(layer, dtype=bool)
            if all((visible & ~own).sum() >= min_visible * area for visible, area in placed):
                break
        else:
            continue  # no placement leaves the others visible enough: fewer objects
        placed = [(visible & ~own, area) for visible, area in placed]
        placed.append((own, int(own.sum())))
        colour = _visible_colour(rng, background, cx, cy, radius)
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
    max_objects: int = 4,
    radius_range: tuple[float, float] | list[float] = (0.15, 0.30),
    min_visible: float = 0.6,
    seed: int = 0,
) -> Path:
    """Write the shapes dataset to ``root`` unless it is already there with these parameters.

    The dataset is written to a temporary folder beside ``root`` and moved into
    place in one step, so an interrupted generation never leaves a half-written
    dataset that looks complete.
    """
    root = Path(root)
    low, high = (float(r) for r in radius_range)
    if not 0.0 < low <= high <= 0.5:
        raise UserError(
            f"data.generate.radius_range={[low, high]}: need 0 < low <= high <= 0.5 "
            "(object radii as fractions of the image size), e.g. [0.15, 0.30]"
        )
    if not 0.0 <= min_visible <= 1.0:
        raise UserError(
            f"data.generate.min_visible={min_visible}: need a fraction in [0, 1] (how much of "
            "each object later objects may not cover), e.g. 0.6"
        )
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "image_size": image_size,
        "max_objects": max_objects,
        "radius_range": [low, high],
        "min_visible": float(min_visible),
        "seed": seed,
        "format_version": FORMAT_VERSION,
    }
    stamp = root / "shapes.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Jobs of one sweep (or DDP ranks) may all find the dataset missing at once: one writes
    # it while the others wait, then find it written.
    with _exclusive(root.parent / f".{root.name}.lock"):
        if stamp.is_file() and json.loads(stamp.read_text()) == params:
            return root
        _write(root, params)
    return root


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` (a no-op where fcntl is missing, i.e. Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(root: Path, params: dict) -> None:
    """Draw every split into a staging folder beside ``root``, then move it into place."""
    stamp = root / "shapes.json"
    num_train, num_val, num_test = params["num_train"], params["num_val"], params["num_test"]
    image_size, max_objects, seed = params["image_size"], params["max_objects"], params["seed"]
    low, high = params["radius_range"]
    min_visible = params["min_visible"]
    if root.exists() and not stamp.is_file():
        raise FileExistsError(
            f"data.root={root} exists but holds no shapes.json, so it is not a generated "
            "shapes dataset; refusing to overwrite it. Point data.root at an empty or "
            "new folder (or delete this one)."
        )

    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split_index, split in enumerate(SPLITS):
        (staging / "images" / split).mkdir(parents=True)
        (staging / "masks" / split).mkdir(parents=True)
        for index in range(counts[split]):
            # Disjoint seeds per split and per dataset seed.
            scene_seed = seed * 10_000_019 + split_index * 1_000_003 + index
            image, mask = draw_scene(scene_seed, image_size, max_objects, (low, high), min_visible)
            name = f"{index:05d}.png"
            Image.fromarray(image).save(staging / "images" / split / name)
            Image.fromarray(mask).save(staging / "masks" / split / name)
    (staging / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    (staging / "shapes.json").write_text(json.dumps(params, indent=2) + "\n")

    if root.exists():
        shutil.rmtree(root)
    os.replace(staging, root)
