"""COCO instance annotations converted to semantic masks (pycocotools), cached on first use.

    root/annotations/instances_{split}.json      e.g. instances_train2017.json
    root/{split}/<file_name>                     e.g. train2017/000000000009.jpg

Conversion rules (deterministic, the same every epoch and on every machine):
- class ids are contiguous: 0 = background, then the chosen categories in the
  order given (``categories``), or sorted by category id (not the file's order) when
  all are used; instances of categories not chosen are background. When the file has
  a category named ``background`` (also ``_background_``/``__background__``, any
  case), that category is class 0 and keeps its name; no extra class is added;
- polygons and RLE (compressed and uncompressed) are both decoded;
- where instances overlap, the smaller one (by annotation ``area``) is drawn last
  and wins: it is usually the object in front (a cup on a table); ties go to the
  higher annotation id;
- ``iscrowd`` regions become ``ignore_index`` wherever no single (non-crowd)
  instance labels the pixel.
Masks are written as PNGs under ``cache_dir`` the first time a sample is read,
keyed by the annotation file and the conversion settings, so later epochs and
runs only read a PNG.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segexp.data.datasets.base import DataError, SegDataset, read_mask

CONVERSION_VERSION = 2  # bump when the rules above change, so caches are rebuilt

# The 20 COCO categories that are the VOC classes, in VOC order (torchvision's reference).
VOC_CATEGORIES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)  # fmt: skip


BACKGROUND_NAMES = ("background", "_background_", "__background__")


def read_categories(json_path: Path) -> list[dict]:
    """The ``categories`` list of a COCO annotation file.

    Annotation files run to hundreds of MB while their categories take a few KB, at
    the start or the end of the file: both ends are searched first, and only when that
    fails is the whole file parsed.
    """
    try:
        size = json_path.stat().st_size
        with open(json_path, "rb") as handle:
            head = handle.read(1 << 20)
            handle.seek(max(size - (1 << 20), 0))
            tail = handle.read()
    except OSError as error:
        raise DataError(f"{json_path}: cannot read the annotation JSON ({error}).") from error
    decoder = json.JSONDecoder()
    for chunk in (head, tail):
        text = chunk.decode("utf-8", errors="replace")
        start = text.find('"categories"')
        while start >= 0:
            colon = text.find(":", start + len('"categories"'))
            bracket = text.find("[", colon)
            if colon >= 0 and bracket >= 0 and not text[colon + 1 : bracket].strip():
                try:
                    found, _ = decoder.raw_decode(text, bracket)
                except ValueError:
                    found = None
                if isinstance(found, list) and all(
                    isinstance(c, dict) and "id" in c and "name" in c for c in found
                ):
                    return found
            start = text.find('"categories"', start + 1)
    try:
        return list(json.loads(json_path.read_text())["categories"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{json_path}: cannot read the annotation JSON's categories ({error}); a COCO "
            'file has "categories": [{"id": 1, "name": "..."}, ...].'
        ) from error


def class_layout(
    coco_categories: list[dict], categories: Any, json_path: Path
) -> tuple[list[str], dict[int, int]]:
    """(class names, {category id: class id}) under the rules in the module docstring."""
    by_name = {c["name"]: c["id"] for c in coco_categories}
    if categories is None:
        chosen = [c["name"] for c in sorted(coco_categories, key=lambda c: c["id"])]
    else:
        chosen = list(VOC_CATEGORIES) if categories == "voc" else list(categories)
        unknown = [name for name in chosen if name not in by_name]
        if unknown:
            raise DataError(
                f"data.dataset.categories: {unknown} not in {json_path} "
                f"(valid: {sorted(by_name)}, or 'voc', or null for all)."
            )
    background = next((n for n in chosen if str(n).lower() in BACKGROUND_NAMES), None)
    if background is not None:
        chosen = [n for n in chosen if n != background]
    names = [background or "background", *chosen]
    label_of = {by_name[name]: label for label, name in enumerate(chosen, start=1)}
    if background is not None:
        label_of[by_name[background]] = 0
    return names, label_of


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's segmentation (polygons, RLE or compressed RLE) -> (H, W) bool."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polygons = [p for p in segmentation if len(p) >= 6]  # < 3 points has no area
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowds)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def check_rle_sizes(height: int, width: int, annotations: list[dict], image: str) -> None:
    """Raise DataError naming the annotation id and ``image`` for an RLE whose ``size`` is
    not the image's (pycocotools would fail with a bare ValueError, or paint garbage)."""
    for ann in annotations:
        segmentation = ann["segmentation"]
        size = segmentation.get("size") if isinstance(segmentation, dict) else None
        if size is not None and [int(v) for v in size] != [height, width]:
            raise DataError(
                f"{image}: annotation id {ann.get('id')} has an RLE of size {list(size)} "
                f"(height, width), but the image is {height}x{width}; fix or remove that "
                "annotation in the JSON."
            )


def semantic_mask(
    height: int, width: int, annotations: list[dict], ignore_index: int = 255
) -> np.ndarray:
    """Paint instances into one class map with the rules in the module docstring.

    ``annotations``: dicts with ``segmentation``, ``label`` (contiguous id), ``iscrowd``,
    ``area`` and ``id``.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    things = [a for a in annotations if not a.get("iscrowd", 0)]
    for ann in sorted(things, key=lambda a: (-float(a.get("area", 0.0)), a.get("id", 0))):
        mask[decode_segmentation(ann["segmentation"], height, width)] = ann["label"]
    labelled = mask > 0
    for ann in annotations:
        if ann.get("iscrowd", 0):
            crowd |= decode_segmentation(ann["segmentation"], height, width)
    mask[crowd & ~labelled] = ignore_index
    return mask


class COCODataset(SegDataset):
    """COCO instances -> semantic segmentation.

    Args:
        root: the folder with ``annotations/`` and the image folders.
        split: e.g. ``train2017``, ``val2017`` (fills ``{split}`` in the two paths below).
        annotation_file: path under ``root`` of the instances JSON.
        image_dir: path under ``root`` of the split's images.
        categories: null for all categories, ``voc`` for the 20 VOC ones, or a list of names.
        cache_dir: where converted masks are cached (default ``root/segexp-masks``).
        skip_empty: drop images with no instance of the chosen categories (as torchvision does).
    """

    def __init__(
        self,
        root: str,
        split: str,
        transform: Any = None,
        annotation_file: str = "annotations/instances_{split}.json",
        image_dir: str = "{split}",
        categories: Any = None,
        cache_dir: str | None = None,
        skip_empty: bool = True,
        ignore_index: int = 255,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, strict)
        self.root = Path(root)
        self.ignore_index = ignore_index
        json_path = self.root / annotation_file.format(split=split)
        if not json_path.is_file():
            raise DataError(
                f"data.root={self.root}: no annotation file {json_path}. COCO needs "
                "root/annotations/instances_<split>.json and root/<split>/*.jpg; check data.root "
                "and the split names (data.train_split / data.val_split, e.g. train2017, val2017)."
            )
        try:
            coco = json.loads(json_path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{json_path}: cannot read the annotation JSON ({error}).") from error

        self.class_names, label_of = class_layout(coco["categories"], categories, json_path)

        stat = json_path.stat()
        key = json.dumps(
            [str(json_path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(label_of.items()),
             ignore_index, CONVERSION_VERSION]
        )  # fmt: skip
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir or self.root / "segexp-masks") / f"{split}-{digest}"

        annotations: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if ann["category_id"] in label_of:
                annotations.setdefault(ann["image_id"], []).append(
                    {
                        "segmentation": ann["segmentation"],
                        "label": label_of[ann["category_id"]],
                        "iscrowd": ann.get("iscrowd", 0),
                        "area": ann.get("area", 0.0),
                        "id": ann.get("id", 0),
                    }
                )
        images_dir = self.root / image_dir.format(split=split)
        self.image_info: list[tuple[int, int, list[dict]]] = []
        for info in sorted(coco["images"], key=lambda i: i["id"]):
            anns = annotations.get(info["id"], [])
            if skip_empty and not any(not a["iscrowd"] for a in anns):
                continue
            image_path = images_dir / info["file_name"]
            if not image_path.is_file():
                self.report(
                    f"{image_path}: listed in {json_path} but missing; restore it or remove its entry.",
                    kind="unreadable image",
                )
                continue
            # Keyed by the image id, unique in the JSON: a/frame.jpg and b/frame.jpg differ.
            self.samples.append((image_path, self.cache_dir / f"{int(info['id'])}.png"))
            self.image_info.append((int(info["height"]), int(info["width"]), anns))

    @classmethod
    def defined_classes(
        cls,
        root: str,
        split: str,
        annotation_file: str = "annotations/instances_{split}.json",
        categories: Any = None,
        **kwargs: Any,
    ) -> list[str]:
        """Background + the chosen categories of ``split``'s annotation file."""
        json_path = Path(root) / annotation_file.format(split=split)
        if categories is not None and categories != "voc" and not json_path.is_file():
            return ["background", *categories]
        if categories == "voc":
            return ["background", *VOC_CATEGORIES]
        if not json_path.is_file():
            raise DataError(
                f"data.root={root}: no annotation file {json_path}. COCO needs "
                "root/annotations/instances_<split>.json and root/<split>/*.jpg; check data.root "
                "and data.train_split (e.g. train2017)."
            )
        return class_layout(read_categories(json_path), categories, json_path)[0]

    @classmethod
    def find_splits(
        cls, root: str, annotation_file: str = "annotations/instances_{split}.json", **kwargs: Any
    ) -> list[str]:
        prefix, _, suffix = annotation_file.partition("{split}")
        found = Path(root).glob(f"{prefix}*{suffix}")
        return sorted(str(p.relative_to(root))[len(prefix) : -len(suffix) or None] for p in found)

    def load_mask(self, index: int) -> np.ndarray:
        cache_path = Path(self.samples[index][1])
        if cache_path.is_file():
            try:
                return read_mask(cache_path)
            except DataError:
                pass  # a damaged cache entry is rebuilt below
        height, width, anns = self.image_info[index]
        check_rle_sizes(height, width, anns, str(self.samples[index][0]))
        mask = semantic_mask(height, width, anns, self.ignore_index)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: concurrent loader workers never read a half-written PNG.
        handle, tmp = tempfile.mkstemp(suffix=".png", dir=cache_path.parent)
        os.close(handle)
        Image.fromarray(mask).save(tmp, format="PNG")
        os.replace(tmp, cache_path)
        return mask
