"""ADE20K (SceneParsing, ADEChallengeData2016) as it ships, with reduce_zero_label.

    root/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png

Annotation 0 means "other / unlabelled" and is not one of the 150 classes, so
``reduce_zero_label`` maps 0 -> 255 (ignore) and 1..150 -> 0..149, as the
benchmark and mmsegmentation do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.datasets.base import DataError, SegDataset

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

# Users say train/val; the release says training/validation. Both work.
SPLIT_DIRS = {"train": "training", "val": "validation"}


def reduce_zero_label_lut(ignore_index: int = 255) -> np.ndarray:
    """A 256-entry table: 0 -> ignore_index, k -> k-1 for 1..254, 255 stays ignore_index."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = ignore_index
    lut[255] = ignore_index
    return lut.astype(np.uint8)


class ADE20KDataset(SegDataset):
    """ADE20K SceneParsing, 150 classes.

    Args:
        root: ``ADEChallengeData2016`` or the folder holding it.
        split: ``train``/``training`` or ``val``/``validation``.
        reduce_zero_label: map 0 -> ignore and shift 1..150 down by one (the standard setting).
    """

    class_names = list(ADE20K_CLASSES)

    @classmethod
    def defined_classes(cls, reduce_zero_label: bool = True, **kwargs: Any) -> list[str]:
        return list(ADE20K_CLASSES) if reduce_zero_label else ["other", *ADE20K_CLASSES]

    @classmethod
    def find_splits(cls, root: str, **kwargs: Any) -> list[str]:
        base = Path(root)
        if (base / "ADEChallengeData2016").is_dir():
            base = base / "ADEChallengeData2016"
        images = base / "images"
        if not images.is_dir():
            return []
        names = {folder: split for split, folder in SPLIT_DIRS.items()}
        return sorted(names.get(p.name, p.name) for p in images.iterdir() if p.is_dir())

    def __init__(
        self,
        root: str,
        split: str,
        transform: Any = None,
        reduce_zero_label: bool = True,
        ignore_index: int = 255,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, strict)
        root_path = Path(root)
        self.root = (
            root_path / "ADEChallengeData2016"
            if (root_path / "ADEChallengeData2016").is_dir()
            else root_path
        )
        self.lut = reduce_zero_label_lut(ignore_index) if reduce_zero_label else None
        if not reduce_zero_label:
            self.class_names = ["other", *ADE20K_CLASSES]
        folder = SPLIT_DIRS.get(split, split)
        images = self.root / "images" / folder
        if not images.is_dir():
            raise DataError(
                f"data.root={root}: no folder {images}. ADE20K needs "
                "ADEChallengeData2016/images/{training,validation}/*.jpg and "
                "ADEChallengeData2016/annotations/{training,validation}/*.png; point data.root "
                f"at ADEChallengeData2016 or its parent (split '{split}': train, val, training, validation)."
            )
        for image_path in sorted(
            p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        ):
            mask_path = self.root / "annotations" / folder / f"{image_path.stem}.png"
            if not mask_path.is_file():
                self.report(f"{image_path}: no mask {mask_path}; add it or remove the image.")
                continue
            self.samples.append((image_path, mask_path))

    def load_mask(self, index: int) -> np.ndarray:
        mask = super().load_mask(index)
        if self.lut is None:
            return mask
        if mask.max(initial=0) > 255:
            raise DataError(
                f"{self.samples[index][1]}: labels above 255; ADE20K annotations are 8-bit PNGs."
            )
        return self.lut[mask]
