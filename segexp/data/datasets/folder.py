"""The plain folder layout: images/{split}/*, masks/{split}/<name>.png (docs/data.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segexp.data.datasets.base import DataError, SegDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_class_names(root: Path) -> list[str] | None:
    """Class names from ``root/classes.txt`` (one a line), or None when there is none.
    A name on two lines is a DataError naming both (its classes would share one score)."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return None
    names, first_line = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise DataError(
                f"{path}: line {number} repeats class name {name!r} (line {first_line[name]}); "
                "each line is one class and needs its own name (metrics are reported by name).",
                kind="class names",
            )
        first_line[name] = number
        names.append(name)
    return names


class FolderDataset(SegDataset):
    """Any dataset in the layout ``root/images/<split>/<name>.(png|jpg)`` +
    ``root/masks/<split>/<name>.png`` (+ optional ``root/classes.txt``).

    The classes are the lines of ``classes.txt`` (line i = class id i, background
    included); the splits are the folders under ``root/images``.
    """

    @classmethod
    def defined_classes(cls, root: str, **kwargs: Any) -> list[str] | None:
        return read_class_names(Path(root))

    @classmethod
    def find_splits(cls, root: str, image_dir: str = "images", **kwargs: Any) -> list[str] | None:
        images = Path(root) / image_dir
        if not images.is_dir():
            return []
        return sorted(p.name for p in images.iterdir() if p.is_dir())

    def __init__(
        self,
        root: str,
        split: str,
        transform: Any = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, strict)
        self.root = Path(root)
        images = self.root / image_dir / split
        masks = self.root / mask_dir / split
        if not images.is_dir():
            raise DataError(
                f"data.root={self.root}: no folder {images}. The folder layout is "
                f"root/{image_dir}/<split>/<name>.png|jpg with root/{mask_dir}/<split>/<name>.png; "
                "check data.root or create the split."
            )
        for image_path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            mask_path = masks / f"{image_path.stem}.png"
            if not mask_path.is_file():
                self.report(
                    f"{image_path}: no mask {mask_path}. Every image needs a mask PNG "
                    "with the same name; add it or remove the image."
                )
                continue
            self.samples.append((image_path, mask_path))
        self.class_names = read_class_names(self.root)
