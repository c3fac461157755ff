"""The dataset base class: reading images and masks, applying joint transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from segexp.errors import UserError


class DataError(UserError):
    """A problem with the user's data; the message names the file, the problem and the fix."""


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3).

    Grayscale and palette images are expanded to RGB, RGBA drops its alpha,
    16-bit images are scaled to 8 bits; anything else is a DataError.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
                array = np.clip(array / peak * 255.0, 0, 255).astype(np.uint8)
                return np.repeat(array[..., None], 3, axis=-1)
            if image.mode == "F":
                raise DataError(
                    f"{path}: image mode 'F' (32-bit float) is not supported; "
                    "save it as 8-bit RGB or 16-bit PNG."
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"{path}: cannot read image ({error}); replace or remove the file."
        ) from error


def read_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as integer class ids (H, W). Palette PNGs give their indices."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("RGB", "RGBA"):
                raise DataError(
                    f"{path}: mask is {mask.mode}, but masks must hold one class id per "
                    "pixel (mode L, P or I;16). Convert colour-coded masks to class ids "
                    "(a palette PNG keeps the colours for viewing)."
                )
            array = np.array(mask)  # a writable copy: torch warns on read-only arrays
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"{path}: cannot read mask ({error}); replace or remove the file."
        ) from error
    if array.ndim != 2:
        raise DataError(f"{path}: mask has shape {array.shape}, expected (H, W) class ids.")
    return array


class SegDataset(Dataset):
    """Base class: subclasses fill ``self.samples`` with (image_path, mask_path) pairs.

    Override ``load_mask`` when the on-disk labels need mapping to training ids.
    With ``strict=False`` (used by ``segexp.data.check``) an image without a mask is
    recorded in ``self.problems`` instead of raising, so one scan reports them all.
    """

    class_names: list[str] | None = None

    def __init__(self, split: str, transform: Any = None, strict: bool = True) -> None:
        self.split = split
        self.transform = transform
        self.strict = strict
        self.samples: list[tuple[Path, Path]] = []
        self.problems: list[str] = []

    def report(self, message: str) -> None:
        """A layout problem (e.g. a missing mask): raise when strict, else record it."""
        if self.strict:
            raise DataError(message)
        self.problems.append(message)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.samples[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        return read_mask(self.samples[index][1])

    def name(self, index: int) -> str:
        return Path(self.samples[index][0]).stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair, before transforms: image (H, W, 3) uint8, mask (H, W) ints."""
        return self.load_image(index), self.load_mask(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        import torch

        if not isinstance(image, torch.Tensor):  # no ToTensor in the pipeline
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        return {"image": image, "mask": mask, "name": self.name(index)}
