"""Dataset formats. Each reads one on-disk layout and returns (image, mask) pairs.

Every dataset class takes ``split`` and ``transform`` (plus its own layout
arguments) and yields ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
"""

from segexp.datasets.ade20k import ADE20KDataset
from segexp.datasets.base import DataError, SegDataset
from segexp.datasets.cityscapes import CityscapesDataset
from segexp.datasets.coco import COCODataset
from segexp.datasets.folder import FolderDataset
from segexp.datasets.voc import VOCDataset

__all__ = [
    "ADE20KDataset",
    "COCODataset",
    "CityscapesDataset",
    "DataError",
    "FolderDataset",
    "SegDataset",
    "VOCDataset",
]
