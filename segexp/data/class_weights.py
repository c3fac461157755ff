"""Class weights from label frequencies (median frequency balancing), cached per dataset.

    python train.py loss.weight=auto        # CE weights computed from the train split

Median frequency balancing (Eigen & Fergus, 2015): freq(c) = pixels of class c /
pixels of the images in which c appears; weight(c) = median(freq) / freq(c).
Rare classes get weights above 1, frequent ones below. Classes absent from the
split get weight 1.0 (they cannot be balanced from data they are not in).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.scan import LabelCounts


def label_counts(
    dataset, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels per class, pixels of the images containing each class), both (num_classes,) int64.

    Counted by the mask scanner (``segexp.data.scan.LabelCounts``). Labels outside
    0..num_classes-1 (other than ignore_index) are skipped here; ``segexp.check`` reports them.
    """
    stats = LabelCounts(num_classes, ignore_index)
    for index in range(len(dataset)):
        stats.add(np.asarray(dataset.load_mask(index)))
    return stats.counts, stats.image_pixels


def median_frequency_weights(counts: np.ndarray, image_pixels: np.ndarray) -> list[float]:
    """Median frequency balancing; absent classes get 1.0."""
    counts, image_pixels = np.asarray(counts, float), np.asarray(image_pixels, float)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    freq = np.zeros_like(counts)
    freq[present] = counts[present] / image_pixels[present]
    weights = np.ones_like(counts)
    weights[present] = np.median(freq[present]) / freq[present]
    return [round(float(w), 6) for w in weights]


def _dataset_key(dataset, num_classes: int, ignore_index: int) -> str:
    """A hash of what the weights depend on: the files (paths, sizes, mtimes) and the label setup."""
    digest = hashlib.sha1(f"{type(dataset).__name__}|{num_classes}|{ignore_index}".encode())
    for sample in dataset.samples:
        for path in sample[:2]:
            path = Path(path)
            stat = path.stat() if path.is_file() else None
            digest.update(f"{path}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_class_weights(
    dataset, num_classes: int, ignore_index: int, cache_dir: str | os.PathLike
) -> list[float]:
    """Class weights of ``dataset``, read from ``cache_dir`` when computed before for the same files."""
    path = (
        Path(cache_dir) / f"class-weights-{_dataset_key(dataset, num_classes, ignore_index)}.json"
    )
    if path.is_file():
        return json.loads(path.read_text())["weights"]
    counts, image_pixels = label_counts(dataset, num_classes, ignore_index)
    weights = median_frequency_weights(counts, image_pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"weights": weights, "pixel_counts": counts.tolist()}, indent=1))
    os.replace(tmp, path)
    return weights


def fill_auto_weights(loss: Any, datamodule, cache_dir: str | os.PathLike) -> Any:
    """Replace every ``weight: auto`` in a loss config (a plain dict) by the train split's weights."""
    if isinstance(loss, dict):
        out = {}
        for key, value in loss.items():
            if key == "weight" and value == "auto":
                datamodule.prepare_data()  # generated datasets (shapes) must exist first
                dataset = datamodule.raw_dataset("train")
                value = cached_class_weights(
                    dataset, datamodule.num_classes, datamodule.ignore_index, cache_dir
                )
            else:
                value = fill_auto_weights(value, datamodule, cache_dir)
            out[key] = value
        return out
    if isinstance(loss, list):
        return [fill_auto_weights(value, datamodule, cache_dir) for value in loss]
    return loss
