"""Cityscapes as it ships: leftImg8bit/ + gtFine/ (labelIds mapped to the 19 train ids).

root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.datasets.base import DataError, SegDataset

# (labelId, trainId, name) for the 19 evaluated classes, from cityscapesScripts' labels.py;
# every other labelId (void, rarely-used classes like "caravan") becomes ignore (255).
CITYSCAPES_TRAIN_IDS = (
    (7, 0, "road"), (8, 1, "sidewalk"), (11, 2, "building"), (12, 3, "wall"), (13, 4, "fence"),
    (17, 5, "pole"), (19, 6, "traffic light"), (20, 7, "traffic sign"), (21, 8, "vegetation"),
    (22, 9, "terrain"), (23, 10, "sky"), (24, 11, "person"), (25, 12, "rider"), (26, 13, "car"),
    (27, 14, "truck"), (28, 15, "bus"), (31, 16, "train"), (32, 17, "motorcycle"), (33, 18, "bicycle"),
)  # fmt: skip


def label_id_lut(ignore_index: int = 255) -> np.ndarray:
    """A 256-entry table: labelId -> trainId (ignore_index for the rest)."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for label_id, train_id, _ in CITYSCAPES_TRAIN_IDS:
        lut[label_id] = train_id
    return lut


class CityscapesDataset(SegDataset):
    """Cityscapes fine (or coarse) annotations, 19 classes.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (test masks are not public: all ignore).
        annotation_dir: ``gtFine`` or ``gtCoarse``.
        ignore_index: the value non-evaluated labelIds map to.
    """

    class_names = [name for _, _, name in CITYSCAPES_TRAIN_IDS]

    @classmethod
    def find_splits(cls, root: str, **kwargs: Any) -> list[str]:
        images = Path(root) / "leftImg8bit"
        return sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []

    def __init__(
        self,
        root: str,
        split: str,
        transform: Any = None,
        annotation_dir: str = "gtFine",
        ignore_index: int = 255,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, strict)
        self.root = Path(root)
        self.lut = label_id_lut(ignore_index)
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            raise DataError(
                f"data.root={self.root}: no folder {images}. Cityscapes needs "
                "root/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
                f"root/{annotation_dir}/<split>/<city>/*_{annotation_dir}_labelIds.png; "
                "point data.root at the folder that holds leftImg8bit/."
            )
        for image_path in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image_path.name[: -len("_leftImg8bit.png")]
            mask_path = (
                self.root
                / annotation_dir
                / split
                / image_path.parent.name
                / f"{stem}_{annotation_dir}_labelIds.png"
            )
            if not mask_path.is_file():
                self.report(
                    f"{image_path}: no mask {mask_path}; add the {annotation_dir} archive for '{split}'."
                )
                continue
            self.samples.append((image_path, mask_path))

    def name(self, index: int) -> str:
        return Path(self.samples[index][0]).name[: -len("_leftImg8bit.png")]

    def load_mask(self, index: int) -> np.ndarray:
        label_ids = super().load_mask(index)
        if label_ids.max(initial=0) > 255:
            raise DataError(
                f"{self.samples[index][1]}: labelIds above 255; expected the *_labelIds.png "
                "files of the Cityscapes release (8-bit)."
            )
        return self.lut[label_ids]  # (H, W) labelIds -> (H, W) trainIds
