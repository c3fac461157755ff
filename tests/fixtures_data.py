"""Tiny datasets written in each format's TRUE on-disk layout, for tests and CLI checks.

Each ``make_<format>(root)`` writes the fixture and returns ``{split: {name: expected}}``,
the training-id mask every sample must load as, derived here independently of the
dataset code (explicit tables, not the library's look-up tables).

    python -m tests.fixtures_data voc /tmp/fixtures/voc     # also: cityscapes ade20k coco folder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (48, 64)  # (H, W): not a multiple of 32, so batching must pad

# Colour per label so that images carry the mask (the model has something to learn).
_COLOURS = np.random.default_rng(123).integers(40, 256, size=(256, 3), dtype=np.uint8)


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), 256 RGB triples flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def blocky(rng: np.random.Generator, labels, size=SIZE, blocks: int = 4) -> np.ndarray:
    """A mask of random rectangles drawn from ``labels`` (background = labels[0])."""
    mask = np.full(size, labels[0], dtype=np.int64)
    for _ in range(blocks):
        h0, w0 = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        h1, w1 = h0 + rng.integers(6, size[0] // 2), w0 + rng.integers(6, size[1] // 2)
        mask[h0:h1, w0:w1] = rng.choice(labels)
    return mask


def image_for(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colours follow the mask, plus noise. (H, W, 3) uint8"""
    image = _COLOURS[np.asarray(mask, dtype=np.int64) % 256].astype(np.int16) + rng.integers(
        -20, 21, (*mask.shape, 3)
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def make_folder(root, counts=None, num_classes: int = 3, seed: int = 0) -> dict:
    """The folder layout (images/, masks/, classes.txt)."""
    root, rng = Path(root), np.random.default_rng(seed)
    counts = counts or {"train": 6, "val": 3, "test": 3}
    expected = {}
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        expected[split] = {}
        for i in range(count):
            mask = blocky(rng, list(range(num_classes))).astype(np.uint8)
            Image.fromarray(image_for(mask, rng)).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")
            expected[split][f"{i:03d}"] = mask
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(num_classes)) + "\n")
    return expected


def make_voc(root, counts=None, sbd: bool = False, seed: int = 0) -> dict:
    """VOCdevkit/VOC2012 with JPEG images and palette PNG masks (255 border around objects).

    With ``sbd``, also ``root/SBD/dataset/{img,cls,train.txt,val.txt}`` (.mat masks), holding
    one id shared with VOC train, one shared with VOC val and two of its own.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    counts = counts or {"train": 6, "val": 3}
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    expected, palette = {}, voc_palette()
    for split, count in counts.items():
        ids = [f"2007_{split}_{i:04d}" for i in range(count)]
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        expected[split] = {}
        for image_id in ids:
            mask = blocky(rng, [0, 1, 7, 15, 20]).astype(np.uint8)
            # VOC's void border: a 1-pixel ring of 255 around each object.
            edges = np.zeros_like(mask, dtype=bool)
            edges[:-1] |= mask[:-1] != mask[1:]
            edges[:, :-1] |= mask[:, :-1] != mask[:, 1:]
            mask[edges] = 255
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
            Image.fromarray(image_for(mask, rng)).save(
                voc / "JPEGImages" / f"{image_id}.jpg", quality=95
            )
            expected[split][image_id] = mask
    if sbd:
        from scipy.io import savemat

        dataset = root / "SBD" / "dataset"
        (dataset / "img").mkdir(parents=True, exist_ok=True)
        (dataset / "cls").mkdir(parents=True, exist_ok=True)
        train_id, val_id = next(iter(expected["train"])), next(iter(expected["val"]))
        sbd_ids = {"train.txt": [train_id, "2008_sbd_0001"], "val.txt": [val_id, "2008_sbd_0002"]}
        expected["train_aug"] = dict(expected["train"])
        for list_name, ids in sbd_ids.items():
            (dataset / list_name).write_text("\n".join(ids) + "\n")
            for image_id in ids:
                mask = blocky(rng, [0, 3, 12]).astype(np.uint8)
                savemat(dataset / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": mask}})
                Image.fromarray(image_for(mask, rng)).save(
                    dataset / "img" / f"{image_id}.jpg", quality=95
                )
                if image_id.startswith("2008_sbd"):
                    expected["train_aug"][image_id] = mask
    return expected


# labelId -> trainId for the ids the fixture uses, typed from cityscapesScripts' table.
CITYSCAPES_EXPECTED = {0: 255, 1: 255, 4: 255, 6: 255, 7: 0, 8: 1, 11: 2, 21: 8, 23: 10,
                       24: 11, 26: 13, 29: 255, 30: 255, 33: 18}  # fmt: skip


def make_cityscapes(root, counts=None, seed: int = 0) -> dict:
    """leftImg8bit/ + gtFine/ (labelIds, plus the color/instanceIds files that ship beside them)."""
    root, rng = Path(root), np.random.default_rng(seed)
    counts = counts or {"train": 6, "val": 3}
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_EXPECTED.items():
        lut[label_id] = train_id
    expected = {}
    for split, count in counts.items():
        expected[split] = {}
        for i in range(count):
            city = ("aachen", "bochum")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            image_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            label_ids = blocky(rng, list(CITYSCAPES_EXPECTED), blocks=6).astype(np.uint8)
            Image.fromarray(image_for(label_ids, rng)).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(lut[label_ids]).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
            Image.fromarray(image_for(label_ids, rng)).save(gt_dir / f"{stem}_gtFine_color.png")
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text("{}")
            expected[split][stem] = np.array(
                [CITYSCAPES_EXPECTED[v] for v in label_ids.ravel()]
            ).reshape(label_ids.shape)
    return expected


def make_ade20k(root, counts=None, seed: int = 0) -> dict:
    """ADEChallengeData2016/{images,annotations}/{training,validation} (0 = other)."""
    root, rng = Path(root), np.random.default_rng(seed)
    counts = counts or {"training": 6, "validation": 3}
    base = root / "ADEChallengeData2016"
    expected = {}
    for folder, count in counts.items():
        split = {"training": "train", "validation": "val"}[folder]
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        expected[split] = {}
        for i in range(count):
            name = f"ADE_{folder[:5]}_{i:08d}" if folder == "training" else f"ADE_val_{i:08d}"
            mask = blocky(rng, [0, 1, 2, 13, 150]).astype(np.uint8)
            Image.fromarray(image_for(mask, rng)).save(
                base / "images" / folder / f"{name}.jpg", quality=95
            )
            Image.fromarray(mask).save(base / "annotations" / folder / f"{name}.png")
            expected[split][name] = np.where(mask == 0, 255, mask.astype(np.int64) - 1)
    (base / "sceneCategories.txt").write_text("")
    return expected


COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root, counts=None, seed: int = 0) -> dict:
    """annotations/instances_{split}.json + {split}/*.jpg with, per image:
    a large polygon (person), a smaller overlapping compressed-RLE instance (dog, must win the
    overlap), an uncompressed-RLE crowd (car), and one image with no annotation at all.

    Expected masks use COCO's category ids mapped to 1 + their rank among all 80 categories.
    Polygons are axis-aligned rectangles on pixel corners; the expected value on their
    1-pixel edge is left as -1 (rasterisers differ there) and tests skip those pixels.
    """
    from pycocotools import mask as mask_utils

    root, rng = Path(root), np.random.default_rng(seed)
    counts = counts or {"train2017": 6, "val2017": 3}
    rank = {cid: i + 1 for i, cid in enumerate(sorted(COCO_CATEGORIES))}
    categories = [
        {"id": cid, "name": name, "supercategory": "x"} for cid, name in COCO_CATEGORIES.items()
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    height, width = SIZE
    expected = {}
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations, expected[split] = [], [], {}
        for i in range(count + 1):  # the last image has no annotations (skipped by default)
            image_id = 1000 * (1 + list(counts).index(split)) + i
            file_name = f"{image_id:012d}.jpg"
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            truth = np.zeros(SIZE, dtype=np.int64)
            if i < count:
                y0, x0 = int(rng.integers(2, 10)), int(rng.integers(2, 10))
                y1, x1 = y0 + int(rng.integers(24, 34)), x0 + int(rng.integers(30, 44))
                polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "segmentation": [polygon], "area": float((x1 - x0) * (y1 - y0)),
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})  # fmt: skip
                truth[y0:y1, x0:x1] = rank[1]
                edge = np.zeros(SIZE, dtype=bool)
                edge[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
                edge[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
                # A smaller dog overlapping the person: compressed RLE.
                dog = np.zeros(SIZE, dtype=np.uint8)
                dy, dx = y0 + 10, x0 + 12
                dog[dy : dy + 12, dx : dx + 14] = 1
                rle = mask_utils.encode(np.asfortranarray(dog))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 18,
                                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                    "area": float(dog.sum()), "bbox": [dx, dy, 14, 12], "iscrowd": 0})  # fmt: skip
                # A crowd of cars in the bottom-right corner: uncompressed RLE.
                crowd = np.zeros(SIZE, dtype=np.uint8)
                crowd[height - 10 :, width - 16 :] = 1
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 3,
                                    "segmentation": _rle_uncompressed(crowd), "area": float(crowd.sum()),
                                    "bbox": [width - 16, height - 10, 16, 10], "iscrowd": 1})  # fmt: skip
                truth[(crowd > 0) & (truth == 0)] = 255
                truth[dog > 0] = rank[18]
                truth[edge & ~(dog > 0)] = -1
                expected[split][f"{image_id:012d}"] = truth
            Image.fromarray(image_for(np.where(truth < 0, 0, truth), rng)).save(
                root / split / file_name, quality=95
            )
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return expected


BUILDERS = {
    "folder": make_folder,
    "voc": make_voc,
    "cityscapes": make_cityscapes,
    "ade20k": make_ade20k,
    "coco": make_coco,
}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in BUILDERS:
        sys.exit(f"usage: python -m tests.fixtures_data {{{','.join(BUILDERS)}}} ROOT")
    target = Path(sys.argv[2])
    BUILDERS[sys.argv[1]](target)
    print(f"wrote a {sys.argv[1]} fixture to {target}")
