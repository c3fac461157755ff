"""A dataset's statistics from its masks: image sizes and how often each class appears.

Read from up to ``MAX_SCANNED`` masks, evenly spread over a split, and cached per dataset
(its files, sizes and mtimes); ``recipe=auto`` (``segexp.run.recipe``) chooses from them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.datasets.base import DataError

MAX_SCANNED = 500  # masks read for the statistics (evenly spread over the split)


@dataclass
class DatasetStats:
    """What the recipe reads from the train split (medians over the scanned masks)."""

    images: int
    scanned: int
    height: int
    width: int
    class_fraction: list[float]  # labelled pixels of each class / all labelled pixels
    image_fraction: list[float]  # fraction of the scanned images that hold each class

    @property
    def long_side(self) -> int:
        return max(self.height, self.width)

    @property
    def short_side(self) -> int:
        return min(self.height, self.width)


def scan_stats(dataset: Any, num_classes: int, ignore_index: int) -> DatasetStats:
    """Read up to ``MAX_SCANNED`` masks of ``dataset`` (evenly spread): sizes and class frequencies."""
    from segexp.data.scan import LabelCounts

    total = len(dataset)
    if total == 0:
        raise DataError(
            "recipe=auto: the train split is empty; there is nothing to learn from.",
            kind="empty split",
        )
    indices = np.unique(np.linspace(0, total - 1, min(total, MAX_SCANNED)).round().astype(int))
    counts = LabelCounts(num_classes, ignore_index)
    heights, widths = [], []
    holds = np.zeros(num_classes, dtype=np.int64)
    for index in indices:
        mask = np.asarray(dataset.load_mask(int(index)))
        heights.append(mask.shape[0])
        widths.append(mask.shape[1])
        histogram = counts.add(mask)
        for value in histogram:
            if 0 <= value < num_classes:
                holds[value] += 1
    labelled = max(int(counts.counts.sum()), 1)
    return DatasetStats(
        images=total,
        scanned=len(indices),
        height=int(np.median(heights)),
        width=int(np.median(widths)),
        class_fraction=[round(float(c) / labelled, 6) for c in counts.counts],
        image_fraction=[round(float(h) / len(indices), 4) for h in holds],
    )


def cached_stats(
    dataset: Any, num_classes: int, ignore_index: int, cache_dir: Path
) -> DatasetStats:
    """:func:`scan_stats`, kept in ``cache_dir`` per dataset (its files, sizes and mtimes)."""
    from segexp.data.class_weights import _dataset_key

    path = Path(cache_dir) / f"stats-{_dataset_key(dataset, num_classes, ignore_index)}.json"
    if path.is_file():
        try:
            return DatasetStats(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # an old or broken cache file: scan again
    stats = scan_stats(dataset, num_classes, ignore_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(stats), indent=1))
    os.replace(tmp, path)
    return stats
