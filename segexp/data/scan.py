"""The one mask scanner: every check of an (image, mask) pair and the per-class pixel counts.

Training (every sample, in ``SegDataset.__getitem__``), ``segexp.check`` (every file, all
problems) and the class weights (``loss.weight=auto``) all read masks through these
functions, so they agree on what a bad sample is. Everything is a few numpy passes over
arrays that are already loaded: ``max``/``min`` first, a ``bincount`` only when needed.

Problems come back as ``Problem(kind, message)``: the message names the file, the problem
and the fix; ``kind`` groups them for the check's summary (``FIX_HINTS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Kinds of problem, with one fix each (segexp.check prints the hint of every kind it found).
FIX_HINTS = {
    "unreadable image": "replace the file with a readable copy, or remove it (and its mask).",
    "unreadable mask": "re-export the mask as a PNG of class ids (mode L, P or I;16).",
    "missing mask": "every image needs a mask PNG with the same name in masks/<split>/.",
    "rgb mask": (
        "masks hold one class id per pixel, not a colour. Convert colour masks with your "
        "palette (colour of class i at index i), e.g.\n"
        '      python -c "import sys,numpy as np;from PIL import Image;'
        "P=[(0,0,0),(255,0,0),(0,255,0)];m=np.array(Image.open(sys.argv[1]).convert('RGB'));"
        "o=np.full(m.shape[:2],255,np.uint8);"
        "[o.__setitem__((m==c).all(-1),i) for i,c in enumerate(P)];"
        'Image.fromarray(o).save(sys.argv[2])" rgb_mask.png mask.png'
    ),
    "size mismatch": "re-export the mask at its image's size (width x height must match).",
    "bad labels": (
        "labels must be 0..data.num_classes-1 or data.ignore_index: raise data.num_classes "
        "(or fix classes.txt), set data.ignore_index to the 'unlabelled' value, or fix the masks."
    ),
    "missing split": "create the split's folder, or point data.<stage>_split at one that exists.",
    "empty split": "add samples, or point data.<stage>_split at a split that has them.",
    "class names": "make data.num_classes, data.class_names and classes.txt agree.",
    "no classes": (
        "set data.num_classes=N (the highest label + 1, background included), or write "
        "root/classes.txt with one class name a line (line i names class id i)."
    ),
    "other": "see the message.",
}


@dataclass(frozen=True)
class Problem:
    kind: str  # a key of FIX_HINTS
    message: str  # names the file, the problem and the fix

    def __str__(self) -> str:
        return self.message


def rgb_mask_message(path: str | Path, mode: str) -> str:
    return (
        f"{path}: mask is {mode}, but masks must hold one class id per pixel (mode L, P or "
        "I;16). Convert colour-coded masks to class ids (a palette PNG keeps the colours for "
        "viewing); `python -m segexp.check` prints a one-line converter."
    )


def shape_problem(mask: np.ndarray, mask_path: str | Path) -> Problem | None:
    """An RGB(A) or otherwise non-2-D mask array."""
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        return Problem(
            "rgb mask", rgb_mask_message(mask_path, "RGB" if mask.shape[-1] == 3 else "RGBA")
        )
    if mask.ndim != 2:
        return Problem(
            "unreadable mask",
            f"{mask_path}: mask has shape {mask.shape}, expected (H, W) class ids.",
        )
    return None


def size_problem(
    image: np.ndarray, mask: np.ndarray, image_path: str | Path, mask_path: str | Path
) -> Problem | None:
    """Image and mask of different (height, width)."""
    if image.shape[:2] == mask.shape[:2]:
        return None
    return Problem(
        "size mismatch",
        f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
        f"{mask.shape[1]}x{mask.shape[0]} (width x height); image and mask must be the "
        "same size. Re-export the mask at the image's size.",
    )


def bad_labels(mask: np.ndarray, num_classes: int, ignore_index: int) -> list[int]:
    """Label values outside 0..num_classes-1 other than ignore_index (cheap when there are none)."""
    if mask.size == 0:
        return []
    low, high = int(mask.min()), int(mask.max())
    if low >= 0 and high < num_classes:
        return []  # the common case: one min and one max
    if low >= 0 and high == ignore_index and _below(mask, num_classes, ignore_index):
        return []  # labels plus an ignore border (VOC)
    values = label_histogram(mask)
    return [int(v) for v in sorted(values) if (v < 0 or v >= num_classes) and v != ignore_index]


def _below(mask: np.ndarray, num_classes: int, ignore_index: int) -> bool:
    """True when every pixel other than ignore_index is < num_classes (the usual VOC case)."""
    rest = mask[mask != ignore_index]
    return rest.size == 0 or (int(rest.min()) >= 0 and int(rest.max()) < num_classes)


def label_problem(
    mask: np.ndarray, mask_path: str | Path, num_classes: int, ignore_index: int
) -> Problem | None:
    bad = bad_labels(mask, num_classes, ignore_index)
    if not bad:
        return None
    return Problem(
        "bad labels",
        f"data.num_classes={num_classes} but mask {mask_path} contains label(s) {bad[:10]} "
        f"(valid: 0..{num_classes - 1} or ignore_index={ignore_index}). "
        "Fix data.num_classes, data.ignore_index, or the mask.",
    )


def check_arrays(
    image: np.ndarray | None,
    mask: np.ndarray,
    image_path: str | Path,
    mask_path: str | Path,
    num_classes: int | None,
    ignore_index: int,
) -> list[Problem]:
    """Every problem of one loaded pair (no image: the mask alone); [] when it can be trained on."""
    problem = shape_problem(mask, mask_path)
    if problem is not None:
        return [problem]
    problems = []
    if image is not None:
        problem = size_problem(image, mask, image_path, mask_path)
        if problem is not None:
            problems.append(problem)
    if num_classes is not None:
        problem = label_problem(mask, mask_path, num_classes, ignore_index)
        if problem is not None:
            problems.append(problem)
    return problems


def label_histogram(mask: np.ndarray) -> dict[int, int]:
    """{label value: pixels} of one mask (bincount for the usual small non-negative ids)."""
    flat = np.asarray(mask).ravel()
    if flat.size == 0:
        return {}
    low, high = int(flat.min()), int(flat.max())
    if low >= 0 and high <= 65535:
        counts = np.bincount(flat.astype(np.int64, copy=False), minlength=high + 1)
        present = np.flatnonzero(counts)
        return {int(v): int(counts[v]) for v in present}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


@dataclass
class LabelCounts:
    """Pixel statistics of many masks: what the check prints and the class weights use."""

    num_classes: int | None
    ignore_index: int = 255
    counts: np.ndarray = field(init=False)  # (num_classes,) labelled pixels per class
    image_pixels: np.ndarray = field(init=False)  # (num_classes,) pixels of masks holding c
    ignored: int = 0  # ignore_index pixels
    values: dict[int, int] = field(default_factory=dict)  # every label value found: pixels
    masks: int = 0

    def __post_init__(self) -> None:
        size = self.num_classes or 0
        self.counts = np.zeros(size, dtype=np.int64)
        self.image_pixels = np.zeros(size, dtype=np.int64)

    def add(self, mask: np.ndarray) -> dict[int, int]:
        """Count one mask; returns its own histogram. Out-of-range labels count in ``values`` only."""
        histogram = label_histogram(mask)
        self.masks += 1
        for value, pixels in histogram.items():
            self.values[value] = self.values.get(value, 0) + pixels
            if value == self.ignore_index:
                self.ignored += pixels
            elif self.num_classes is not None and 0 <= value < self.num_classes:
                self.counts[value] += pixels
                self.image_pixels[value] += mask.size
        return histogram
