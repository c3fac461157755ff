"""Dataset formats. Each reads one on-disk layout and returns (image, mask) pairs.

Every dataset class takes ``split`` and ``transform`` (plus its own layout
arguments) and yields ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
"""

from segexp.datasets.base import DataError, SegDataset
from segexp.datasets.folder import FolderDataset

__all__ = ["DataError", "FolderDataset", "SegDataset"]
