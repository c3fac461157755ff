"""The dataset base class: reading images and masks, applying joint transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from segexp.data.scan import check_arrays, rgb_mask_message, shape_problem
from segexp.errors import UserError

BAD_SAMPLE_POLICIES = ("raise", "skip")


class DataError(UserError):
    """A problem with the user's data; the message names the file, the problem and the fix.

    ``kind`` groups it for ``segexp.check``'s fix hints (a key of ``scan.FIX_HINTS``).
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # a copy re-raised from a DataLoader worker keeps its kind
        return (type(self), (str(self), self.kind))


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3).

    Grayscale and palette images are expanded to RGB, RGBA drops its alpha,
    16-bit images are scaled to 8 bits; anything else is a DataError. An EXIF orientation
    (phone photos) is applied, as viewers and common loaders do, so the pixels are the
    image as displayed, the one its mask was drawn on.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
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
            f"{path}: cannot read image ({error}); replace or remove the file.",
            kind="unreadable image",
        ) from error


def exif_orientation(path: Path) -> int:
    """The EXIF Orientation tag of an image file (1, the identity, when absent or unreadable)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(0x0112, 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return 1


def read_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as integer class ids (H, W). Palette PNGs give their indices."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("RGB", "RGBA"):
                raise DataError(rgb_mask_message(path, mask.mode), kind="rgb mask")
            array = np.array(mask)  # a writable copy: torch warns on read-only arrays
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"{path}: cannot read mask ({error}); replace or remove the file.",
            kind="unreadable mask",
        ) from error
    problem = shape_problem(array, path)
    if problem is not None:
        raise DataError(problem.message, kind=problem.kind)
    return array


class SegDataset(Dataset):
    """Base class: subclasses fill ``self.samples`` with (image_path, mask_path) pairs.

    Override ``load_mask`` when the on-disk labels need mapping to training ids.
    With ``strict=False`` (used by ``segexp.data.check``) an image without a mask is
    recorded in ``self.problems`` instead of raising, so one scan reports them all.

    Once ``expect(num_classes, ignore_index)`` is called (the DataModule does), every
    sample read through ``__getitem__`` is checked by the mask scanner (``segexp.data.scan``:
    size, labels, RGB mask; unreadable files fail in the reader): a bad one raises a
    DataError naming the file, or with ``on_bad_sample="skip"`` comes back as
    ``{"skipped": message, "name": ...}`` for the collate function to drop.

    Classes and splits a format defines on disk are read by two classmethods that take
    the dataset's own arguments (``root`` ...) and list no samples: ``defined_classes``
    and ``find_splits`` (None: the format cannot tell).
    """

    class_names: list[str] | None = None

    def __init__(self, split: str, transform: Any = None, strict: bool = True) -> None:
        self.split = split
        self.transform = transform
        self.strict = strict
        self.samples: list[tuple[Path, Path]] = []
        self.problems: list[str] = []
        self.problem_kinds: list[str] = []
        self.num_classes: int | None = None
        self.ignore_index = 255
        self.on_bad_sample = "raise"

    @classmethod
    def defined_classes(cls, **kwargs: Any) -> list[str] | None:
        """The class names this format defines (fixed lists by default), or None."""
        return list(cls.class_names) if cls.class_names else None

    @classmethod
    def find_splits(cls, **kwargs: Any) -> list[str] | None:
        """The split names present on disk, or None when the format cannot tell."""
        return None

    def report(self, message: str, kind: str = "missing mask") -> None:
        """A layout problem (e.g. a missing mask): raise when strict, else record it."""
        if self.strict:
            raise DataError(message, kind=kind)
        self.problems.append(message)
        self.problem_kinds.append(kind)

    def expect(
        self, num_classes: int, ignore_index: int = 255, on_bad_sample: str = "raise"
    ) -> None:
        """Check every sample ``__getitem__`` reads against these labels (see the class doc)."""
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise UserError(
                f"data.on_bad_sample={on_bad_sample!r}: must be one of {list(BAD_SAMPLE_POLICIES)} "
                "(raise: stop at the first bad sample; skip: drop it and list it at the epoch's end)."
            )
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.on_bad_sample = on_bad_sample

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

    def load_checked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``load`` plus the scanner's checks; a DataError names the first problem."""
        image, mask = self.load(index)
        image_path, mask_path = self.samples[index][:2]
        problems = check_arrays(
            image, mask, image_path, mask_path, self.num_classes, self.ignore_index
        )
        if problems:
            raise DataError(problems[0].message, kind=problems[0].kind)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, mask = self.load_checked(index)
        except DataError as error:
            if self.on_bad_sample != "skip":
                raise
            return {"skipped": str(error), "name": self.name(index)}
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        import torch

        if not isinstance(image, torch.Tensor):  # no ToTensor in the pipeline
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        image_path = str(self.samples[index][0])
        return {"image": image, "mask": mask, "name": self.name(index), "path": image_path}
