"""What an evaluation got wrong, image by image: the figures of ``segexp eval``'s analysis.

``Analysis`` takes one image at a time (prediction and ground truth at the image's own
size) and keeps only small things: one row of scores per image, running sums over the
split and the ``worst_k`` images of lowest mIoU (a heap). No whole-split array is held,
so a split of any length evaluates in bounded memory. The figures:

- per image: pixel accuracy, the IoU of each class present in the ground truth or the
  prediction, their mean (the image's mIoU) and the image's Boundary IoU;
- confused pairs: the off-diagonal cells of the split's confusion matrix, largest
  first, with the share of the true class's pixels each takes;
- Boundary IoU (Cheng et al., CVPR 2021): per class, the IoU of the ground truth and the
  prediction restricted to each mask's own pixels within ``d`` of its contour, ``d`` =
  ``boundary_width`` x the image diagonal (at least 1 pixel; chessboard distance, as the
  reference implementation's 3 x 3 erosions; the image border counts as contour); the
  intersections and unions are summed over the split per class, as mIoU's are;
- objects by size: each 8-connected component of a class in the ground truth is an
  object, bucketed small / medium / large by its area (pixels, or share of the image);
  its recall is the share of its pixels predicted as its class; per bucket, the mean
  recall over objects and the recall pooled over their pixels.

Ignored pixels (``ignore_index``, or labels outside the classes) count nowhere: not as
errors, not in a boundary band, not in an object.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexp.errors import UserError

SIZE_BUCKETS = ("small", "medium", "large")
SIZE_UNITS = ("share", "pixels")
# Per class and size bucket: objects, sum of their recalls, their pixels, pixels predicted right.
OBJECTS, RECALL_SUM, PIXELS, CORRECT = range(4)


def confusion(pred: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int):
    """(C, C) confusion matrix, rows target, columns prediction; ``ignore_index`` dropped."""
    keep = (mask != ignore_index) & (mask >= 0) & (mask < num_classes)
    index = mask[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def boundary_pixels(height: int, width: int, ratio: float) -> int:
    """The band's width ``d`` in pixels: ``ratio`` x the image diagonal, at least 1."""
    return max(1, round(ratio * math.hypot(height, width)))


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a boolean mask within ``width`` pixels (chessboard) of its contour.

    Outside the image counts as background, so a mask cut by the border has contour there.
    """
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_C, 3)[1:-1, 1:-1]
    return mask & (distance <= width)


def object_classes(class_names: Sequence[str], exclude: Sequence[str | int] | None) -> list[int]:
    """The class ids whose components count as objects: all but ``exclude`` (names or ids);
    ``None``: all but a class named ``background``."""
    if exclude is None:
        exclude = [name for name in class_names if name == "background"]
    dropped = set()
    for entry in exclude:
        if isinstance(entry, int) and 0 <= entry < len(class_names):
            dropped.add(entry)
        elif entry in class_names:
            dropped.add(list(class_names).index(entry))
        else:
            raise UserError(
                f"analysis.objects.exclude: {entry!r} is not a class; the classes are "
                f"{list(class_names)} (names or ids)."
            )
    return [index for index in range(len(class_names)) if index not in dropped]


@dataclass
class WorstImage:
    """One of the worst images: its CSV row and its pictures' arrays (at its own size)."""

    row: dict[str, Any]
    image: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) class ids, ignore_index
    prediction: np.ndarray  # (H, W) class ids


class Analysis:
    """Streaming per-image analysis of one evaluated split (see the module doc).

    Args:
        class_names: one name per class.
        ignore_index: the label of pixels that count nowhere.
        worst_k: how many of the lowest-mIoU images to keep with their pictures.
        boundary_width: the Boundary IoU band, a fraction of the image diagonal.
        size_unit: ``share`` (of the image's pixels) or ``pixels``: the unit of
            ``size_thresholds``.
        size_thresholds: (small below, large from): an object with area < the first is
            small, >= the second large, medium between.
        objects: the class ids that have objects (default: all).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int = 255,
        worst_k: int = 8,
        boundary_width: float = 0.02,
        size_unit: str = "share",
        size_thresholds: Sequence[float] = (0.01, 0.1),
        objects: Sequence[int] | None = None,
    ) -> None:
        thresholds = [float(t) for t in size_thresholds]
        if size_unit not in SIZE_UNITS:
            raise UserError(f"analysis.size_unit={size_unit!r}: one of {', '.join(SIZE_UNITS)}.")
        if len(thresholds) != 2 or not 0 < thresholds[0] <= thresholds[1]:
            raise UserError(
                f"analysis.size_thresholds={list(size_thresholds)}: give [small_below, "
                "large_from], 0 < small_below <= large_from."
            )
        if worst_k < 0 or not 0 < boundary_width < 1:
            raise UserError(
                f"analysis: worst_k={worst_k} must be >= 0 and boundary_width={boundary_width} "
                "a fraction of the image diagonal in (0, 1)."
            )
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = int(ignore_index)
        self.worst_k = int(worst_k)
        self.boundary_width = float(boundary_width)
        self.size_unit = size_unit
        self.size_thresholds = thresholds
        self.objects = list(range(self.num_classes)) if objects is None else sorted(set(objects))
        classes = self.num_classes
        self.confmat = np.zeros((classes, classes), np.int64)
        self.boundary = np.zeros((2, classes), np.int64)  # intersection, union per class
        self.sizes = np.zeros((classes, len(SIZE_BUCKETS), 4), np.float64)
        self.rows = RowTable(classes)
        self._heap: list[tuple[tuple[float, int], WorstImage]] = []

    # -- one image ----------------------------------------------------------------------------
    def add(
        self,
        prediction: np.ndarray,
        target: np.ndarray,
        name: str = "",
        path: str = "",
        image: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Score one image; return its row. ``image``: the (H, W, 3) uint8 picture, or a
        function returning it (called only when the image is among the worst)."""
        prediction, target = np.asarray(prediction), np.asarray(target)
        if prediction.shape != target.shape or target.ndim != 2:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
        height, width = target.shape
        matrix = confusion(prediction, target, self.num_classes, self.ignore_index)
        self.confmat += matrix
        true_positive = np.diagonal(matrix)
        union = matrix.sum(0) + matrix.sum(1) - true_positive
        present = np.flatnonzero(union)
        iou = np.full(self.num_classes, np.nan)
        iou[present] = true_positive[present] / union[present]
        pixels, correct = int(matrix.sum()), int(true_positive.sum())

        valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        inter, outer = self._boundary(prediction, target, valid, present)
        self.boundary[0, present] += inter
        self.boundary[1, present] += outer
        in_target = np.intersect1d(np.flatnonzero(matrix.sum(1)), self.objects)
        self._objects(prediction, target, in_target, height * width)

        row = {
            "index": len(self.rows),
            "name": name,
            "path": path,
            "height": height,
            "width": width,
            "pixels": pixels,
            "correct": correct,
            "pixel_acc": correct / pixels if pixels else math.nan,
            "mIoU": float(iou[present].mean()) if len(present) else math.nan,
            "boundary_mIoU": float(np.mean(inter[outer > 0] / outer[outer > 0]))
            if (outer > 0).any()
            else math.nan,
            "iou": iou,
        }
        self.rows.append(row)
        self._keep_if_worst(row, image, target, prediction)
        return row

    def _boundary(self, prediction, target, valid, classes) -> tuple[np.ndarray, np.ndarray]:
        """(intersection, union) of the boundary bands of each class in ``classes``."""
        width = boundary_pixels(*target.shape, self.boundary_width)
        inter = np.zeros(len(classes), np.int64)
        outer = np.zeros(len(classes), np.int64)
        for slot, cls in enumerate(classes):
            truth = boundary_band(target == cls, width) & valid
            guess = boundary_band(prediction == cls, width) & valid
            inter[slot] = np.count_nonzero(truth & guess)
            outer[slot] = np.count_nonzero(truth | guess)
        return inter, outer

    def _objects(self, prediction, target, classes, image_pixels: int) -> None:
        import cv2

        scale = image_pixels if self.size_unit == "share" else 1
        for cls in classes:
            count, labels = cv2.connectedComponents((target == cls).astype(np.uint8), None, 8)
            areas = np.bincount(labels.ravel(), minlength=count)[1:]
            right = np.bincount(labels[prediction == cls], minlength=count)[1:]
            buckets = np.searchsorted(self.size_thresholds, areas / scale, side="right")
            stats = self.sizes[cls]
            np.add.at(stats[:, OBJECTS], buckets, 1)
            np.add.at(stats[:, RECALL_SUM], buckets, right / areas)
            np.add.at(stats[:, PIXELS], buckets, areas)
            np.add.at(stats[:, CORRECT], buckets, right)

    def _keep_if_worst(self, row, image, target, prediction) -> None:
        if self.worst_k == 0 or math.isnan(row["mIoU"]):
            return
        # The heap's root is the best of the kept images; indices are unique, so keys are too.
        key = (-row["mIoU"], -row["index"])
        if len(self._heap) == self.worst_k and key <= self._heap[0][0]:
            return
        picture = image() if callable(image) else image
        if picture is None:
            picture = np.zeros((*target.shape, 3), np.uint8)
        dtype = np.uint8 if max(self.num_classes, self.ignore_index + 1) <= 256 else np.int32
        kept = WorstImage(
            row, np.asarray(picture, np.uint8), target.astype(dtype), prediction.astype(dtype)
        )
        if len(self._heap) < self.worst_k:
            heapq.heappush(self._heap, (key, kept))
        else:
            heapq.heapreplace(self._heap, (key, kept))

    # -- processes ----------------------------------------------------------------------------
    def merge(self, other: Analysis) -> None:
        """Add another process's analysis of other images (its rows are numbered after ours)."""
        offset = len(self.rows)
        self.confmat += other.confmat
        self.boundary += other.boundary
        self.sizes += other.sizes
        for row in other.rows:
            self.rows.append({**row, "index": row["index"] + offset})
        for _, kept in other._heap:
            row = self.rows[kept.row["index"] + offset]
            self._keep_if_worst(row, kept.image, kept.target, kept.prediction)

    # -- the split ----------------------------------------------------------------------------
    def worst(self) -> list[WorstImage]:
        """The kept images, worst first (ties: the earlier image first)."""
        return [kept for _, kept in sorted(self._heap, key=lambda item: item[0], reverse=True)]

    def pairs(self, top: int = 20) -> list[dict[str, Any]]:
        """The ``top`` largest off-diagonal cells: true class, predicted class, pixels and
        their share of the true class's labelled pixels."""
        off = self.confmat.copy()
        np.fill_diagonal(off, 0)
        rows, cols = np.nonzero(off)
        counts = off[rows, cols]
        order = np.lexsort((cols, rows, -counts))[:top]
        totals = self.confmat.sum(1)
        return [
            {
                "true": self.class_names[rows[i]],
                "predicted": self.class_names[cols[i]],
                "pixels": int(counts[i]),
                "share_of_true": float(counts[i] / totals[rows[i]]),
            }
            for i in order
        ]

    def boundary_iou(self) -> tuple[np.ndarray, float]:
        """(Boundary IoU per class, NaN where no band had pixels; their mean)."""
        inter, union = self.boundary.astype(np.float64)
        iou = np.divide(inter, union, out=np.full(self.num_classes, np.nan), where=union > 0)
        return iou, float(np.nanmean(iou)) if (union > 0).any() else math.nan

    def size_table(self) -> list[dict[str, Any]]:
        """Per bucket (class ``all``, then each object class): objects, mean object recall,
        pixel recall; buckets without objects are left out."""
        rows = []
        for cls, stats in [("all", self.sizes.sum(0))] + [
            (self.class_names[c], self.sizes[c]) for c in self.objects
        ]:
            for bucket, (objects, recall_sum, pixels, correct) in zip(SIZE_BUCKETS, stats):
                if objects:
                    rows.append(
                        {
                            "class": cls,
                            "bucket": bucket,
                            "objects": int(objects),
                            "recall": recall_sum / objects,
                            "pixel_recall": correct / pixels,
                        }
                    )
        return rows

    def bucket_ranges(self) -> dict[str, str]:
        """Each bucket's area range in words, e.g. ``< 1% of the image``."""

        low, high = self.size_thresholds
        if self.size_unit == "share":
            low, high, unit = f"{low * 100:.4g}%", f"{high * 100:.4g}%", " of the image"
        else:
            low, high, unit = f"{low:.4g}", f"{high:.4g}", " pixels"
        return {
            "small": f"< {low}{unit}",
            "medium": f"{low} to < {high}{unit}",
            "large": f">= {high}{unit}",
        }

    def summary(self, top_pairs: int = 20) -> dict[str, Any]:
        """Everything but the per-image rows, JSON-ready (NaN as None)."""
        per_class, mean = self.boundary_iou()
        matrix = self.confmat
        total = int(matrix.sum())
        return {
            "images": len(self.rows),
            "pixel_acc": _finite(np.trace(matrix) / total if total else math.nan),
            "boundary": {
                "width": self.boundary_width,
                "mIoU": _finite(mean),
                "iou": {n: _finite(v) for n, v in zip(self.class_names, per_class.tolist())},
            },
            "pairs": self.pairs(top_pairs),
            "sizes": {
                "unit": self.size_unit,
                "thresholds": self.size_thresholds,
                "ranges": self.bucket_ranges(),
                "table": self.size_table(),
            },
        }

    def write_csv(self, path: str | os.PathLike) -> Path:
        """``per_image.csv``: one row per image (``ROW_COLUMNS``, then ``iou/<class>``; NaN,
        a class in neither the image's mask nor its prediction, as empty), atomically."""
        from segexp.run.rundir import write_text

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([*ROW_COLUMNS, *(f"iou/{name}" for name in self.class_names)])
        for row in self.rows:
            values = [row[key] for key in ROW_COLUMNS] + row["iou"].tolist()
            writer.writerow(["" if _isnan(v) else repr(v) if isinstance(v, float) else v
                             for v in values])  # fmt: skip
        return write_text(path, buffer.getvalue())


ROW_COLUMNS = (
    "index",
    "name",
    "path",
    "height",
    "width",
    "pixels",
    "correct",
    "pixel_acc",
    "mIoU",
    "boundary_mIoU",
)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


NUMBERS = tuple(c for c in ROW_COLUMNS if c not in ("name", "path"))
INTEGERS = ("index", "height", "width", "pixels", "correct")


class RowTable:
    """The per-image rows, packed in blocks of ``CHUNK`` rows: the numbers (and IoU per
    class) in one float64 array, name and path in one object array. Appending a row keeps
    no allocation of its own: thousands of small per-row objects, interleaved with each
    batch's large temporary arrays, pin glibc's heap (measured here: RSS grew 7.5 MB per
    512 px image that way); a block per ``CHUNK`` rows does not."""

    CHUNK = 1024

    def __init__(self, num_classes: int) -> None:
        self.width = len(NUMBERS) + num_classes
        self._numbers: list[np.ndarray] = []
        self._text: list[np.ndarray] = []
        self._count = 0

    def append(self, row: dict[str, Any]) -> None:
        """Pack a row (``ROW_COLUMNS`` and ``iou``); its ``index`` is its position."""
        slot = self._count % self.CHUNK
        if slot == 0:
            self._numbers.append(np.full((self.CHUNK, self.width), np.nan))
            self._text.append(np.empty((self.CHUNK, 2), dtype=object))
        numbers = self._numbers[-1][slot]
        numbers[: len(NUMBERS)] = [row[key] for key in NUMBERS]
        numbers[len(NUMBERS) :] = row["iou"]
        self._text[-1][slot] = row["name"], row["path"]
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._count:
            raise IndexError(index)
        numbers = self._numbers[index // self.CHUNK][index % self.CHUNK]
        name, path = self._text[index // self.CHUNK][index % self.CHUNK]
        row: dict[str, Any] = {"name": name, "path": path}
        for key, value in zip(NUMBERS, numbers[: len(NUMBERS)].tolist()):
            row[key] = int(value) if key in INTEGERS else value
        row["iou"] = numbers[len(NUMBERS) :].copy()
        return row

    def __iter__(self):
        return (self[index] for index in range(self._count))


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
