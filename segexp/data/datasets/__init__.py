"""Dataset formats. Each reads one on-disk layout and returns (image, mask) pairs.

Every dataset class takes ``split`` and ``transform`` (plus its own layout
arguments) and yields ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
"""

from segexp.data.datasets.ade20k import ADE20KDataset
from segexp.data.datasets.base import DataError, SegDataset
from segexp.data.datasets.cityscapes import CityscapesDataset
from segexp.data.datasets.coco import COCODataset
from segexp.data.datasets.folder import FolderDataset
from segexp.data.datasets.voc import VOCDataset

__all__ = [
    "ADE20KDataset",
    "COCODataset",
    "CityscapesDataset",
    "DataError",
    "FolderDataset",
    "SegDataset",
    "VOCDataset",
]
