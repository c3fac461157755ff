"""Pascal VOC 2012 as it ships (VOCdevkit/VOC2012), plus the optional SBD "train_aug" set.

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          palette PNGs: the palette index is the class id
    root/ImageSets/Segmentation/{train,val,trainval}.txt

Masks are read as palette indices (never converted to RGB): 0 = background,
1..20 = the classes, 255 = the "void" border around objects (ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.datasets.base import DataError, SegDataset

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The split name that selects VOC train + SBD (train + val) minus VOC val: the usual
# 10,582-image augmented training set.
TRAIN_AUG = "train_aug"


def read_id_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def find_voc_root(root: Path) -> Path:
    """Accept either VOCdevkit/VOC2012 itself or a folder above it."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DataError(
        f"data.root={root}: no ImageSets/Segmentation folder (looked in {root}, {root}/VOC2012 "
        f"and {root}/VOCdevkit/VOC2012). Point data.root at the VOC2012 folder of VOCdevkit."
    )


class VOCDataset(SegDataset):
    """Pascal VOC 2012 segmentation (21 classes, 255 = ignore).

    Args:
        root: the ``VOC2012`` folder (or a folder above it).
        split: a list in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``), or
            ``train_aug`` for VOC train + SBD train/val minus VOC val (needs ``sbd_root``).
        sbd_root: the SBD ``dataset`` folder (``img/``, ``cls/*.mat``, ``train.txt``, ``val.txt``).
    """

    class_names = list(VOC_CLASSES)

    @classmethod
    def find_splits(cls, root: str, sbd_root: str | None = None, **kwargs: Any) -> list[str]:
        try:
            lists = find_voc_root(Path(root)) / "ImageSets" / "Segmentation"
        except DataError:
            return []
        return sorted(p.stem for p in lists.glob("*.txt")) + ([TRAIN_AUG] if sbd_root else [])

    def __init__(
        self,
        root: str,
        split: str,
        transform: Any = None,
        sbd_root: str | None = None,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, strict)
        self.root = find_voc_root(Path(root))
        lists = self.root / "ImageSets" / "Segmentation"
        if split == TRAIN_AUG:
            ids = self._train_aug_ids(lists, sbd_root)
        else:
            list_file = lists / f"{split}.txt"
            if not list_file.is_file():
                options = sorted(p.stem for p in lists.glob("*.txt")) + [TRAIN_AUG]
                raise DataError(
                    f"VOC split '{split}': no {list_file} (options: {options}). "
                    "Set data.train_split / data.val_split / data.test_split to one of them "
                    "(VOC test labels are not public: evaluate with split=val)."
                )
            ids = [(image_id, "voc") for image_id in read_id_list(list_file)]
        for image_id, source in ids:
            if source == "voc":
                image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
                mask_path = self.root / "SegmentationClass" / f"{image_id}.png"
            else:
                image_path = self.sbd_root / "img" / f"{image_id}.jpg"
                mask_path = self.sbd_root / "cls" / f"{image_id}.mat"
            if not mask_path.is_file():
                self.report(
                    f"{image_path}: no mask {mask_path}; restore it or drop '{image_id}' from the list."
                )
                continue
            self.samples.append((image_path, mask_path))

    def _train_aug_ids(self, lists: Path, sbd_root: str | None) -> list[tuple[str, str]]:
        if sbd_root is None:
            raise DataError(
                f"VOC split '{TRAIN_AUG}' needs the SBD dataset: set data.dataset.sbd_root to SBD's "
                "'dataset' folder (img/, cls/, train.txt, val.txt), or use data.train_split=train."
            )
        self.sbd_root = Path(sbd_root)
        val = set(read_id_list(lists / "val.txt"))
        voc_train = read_id_list(lists / "train.txt")
        ids = [(i, "voc") for i in voc_train]
        seen = set(voc_train) | val
        for name in ("train.txt", "val.txt"):
            path = self.sbd_root / name
            if not path.is_file():
                raise DataError(
                    f"data.dataset.sbd_root={sbd_root}: no {path}; point it at SBD's 'dataset' folder."
                )
            for image_id in read_id_list(path):
                if image_id not in seen:  # VOC's own mask wins; VOC val never leaks into training
                    ids.append((image_id, "sbd"))
                    seen.add(image_id)
        return ids

    def load_mask(self, index: int) -> np.ndarray:
        path = Path(self.samples[index][1])
        if path.suffix == ".mat":  # SBD: MATLAB struct GTcls.Segmentation, same class ids
            from scipy.io import loadmat

            try:
                return np.array(loadmat(path)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
            except Exception as error:  # scipy raises several types for broken files
                raise DataError(
                    f"{path}: cannot read SBD mask ({error}); replace or remove it."
                ) from error
        return super().load_mask(index)
