"""Each dataset format read from a tiny fixture in its true on-disk layout (tests/fixtures_data.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segexp.data.datasets import (
    ADE20KDataset,
    CityscapesDataset,
    COCODataset,
    DataError,
    FolderDataset,
    VOCDataset,
)
from segexp.data.datasets.base import read_image, read_mask
from tests import fixtures_data as fixtures


def assert_masks(dataset, expected):
    """Every sample loads as its expected training-id mask (pixels marked -1 are not compared)."""
    assert sorted(dataset.name(i) for i in range(len(dataset))) == sorted(expected)
    for index in range(len(dataset)):
        mask, truth = dataset.load_mask(index), expected[dataset.name(index)]
        compared = truth >= 0
        assert compared.mean() > 0.7
        np.testing.assert_array_equal(mask[compared], truth[compared], err_msg=dataset.name(index))
        assert dataset.load_image(index).shape == (*mask.shape, 3)


def test_folder(tmp_path):
    expected = fixtures.make_folder(tmp_path)
    dataset = FolderDataset(str(tmp_path), "val")
    assert_masks(dataset, expected["val"])
    assert dataset.class_names == ["c0", "c1", "c2"]


def test_voc_reads_palette_indices_and_keeps_the_255_border(tmp_path):
    expected = fixtures.make_voc(tmp_path)
    # The mask files really are palette PNGs whose colours differ from their indices.
    path = tmp_path / "VOCdevkit/VOC2012/SegmentationClass" / f"{next(iter(expected['train']))}.png"
    assert Image.open(path).mode == "P"
    for root in (tmp_path, tmp_path / "VOCdevkit" / "VOC2012"):  # the devkit or VOC2012 itself
        dataset = VOCDataset(str(root), "train")
        assert_masks(dataset, expected["train"])
    assert (dataset.load_mask(0) == 255).any() and len(dataset.class_names) == 21
    assert_masks(VOCDataset(str(tmp_path), "val"), expected["val"])


def test_voc_train_aug_adds_sbd_without_leaking_val(tmp_path):
    expected = fixtures.make_voc(tmp_path, sbd=True)
    dataset = VOCDataset(str(tmp_path), "train_aug", sbd_root=str(tmp_path / "SBD" / "dataset"))
    assert_masks(dataset, expected["train_aug"])  # VOC train + 2 SBD-only ids, no VOC val id
    assert not set(expected["val"]) & {dataset.name(i) for i in range(len(dataset))}
    with pytest.raises(DataError, match="sbd_root"):
        VOCDataset(str(tmp_path), "train_aug")
    with pytest.raises(
        DataError, match=r"VOC split 'nope'.*options: \['train', 'val', 'train_aug'\]"
    ):
        VOCDataset(str(tmp_path), "nope")


def test_cityscapes_maps_label_ids_to_19_train_ids(tmp_path):
    expected = fixtures.make_cityscapes(tmp_path)
    dataset = CityscapesDataset(str(tmp_path), "train")
    assert_masks(dataset, expected["train"])
    assert len(dataset.class_names) == 19 and dataset.class_names[13] == "car"
    values = set()
    for index in range(len(dataset)):
        values |= set(np.unique(dataset.load_mask(index)).tolist())
    assert 255 in values and max(v for v in values if v != 255) <= 18


def test_cityscapes_missing_mask_is_named(tmp_path):
    fixtures.make_cityscapes(tmp_path, counts={"val": 2})
    victim = next((tmp_path / "gtFine" / "val").glob("*/*_labelIds.png"))
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        CityscapesDataset(str(tmp_path), "val")
    lenient = CityscapesDataset(str(tmp_path), "val", strict=False)
    assert len(lenient) == 1 and victim.name in lenient.problems[0]


def test_ade20k_reduce_zero_label(tmp_path):
    expected = fixtures.make_ade20k(tmp_path)
    assert_masks(ADE20KDataset(str(tmp_path), "train"), expected["train"])
    dataset = ADE20KDataset(str(tmp_path / "ADEChallengeData2016"), "validation")
    assert_masks(dataset, expected["val"])
    assert len(dataset.class_names) == 150
    raw = ADE20KDataset(str(tmp_path), "val", reduce_zero_label=False)
    assert len(raw.class_names) == 151
    name = raw.name(0)
    np.testing.assert_array_equal(
        raw.load_mask(0), np.where(expected["val"][name] == 255, 0, expected["val"][name] + 1)
    )


def test_coco_polygons_rle_crowd_and_overlaps(tmp_path):
    expected = fixtures.make_coco(tmp_path)
    dataset = COCODataset(str(tmp_path), "train2017", cache_dir=str(tmp_path / "cache"))
    assert len(dataset.class_names) == 81 and dataset.class_names[1] == "person"
    assert_masks(dataset, expected["train2017"])  # the image without annotations is skipped
    with_empty = COCODataset(
        str(tmp_path), "val2017", cache_dir=str(tmp_path / "cache"), skip_empty=False
    )
    assert len(with_empty) == len(expected["val2017"]) + 1
    assert (with_empty.load_mask(len(with_empty) - 1) == 0).all()


def test_coco_category_subset_is_contiguous(tmp_path):
    expected = fixtures.make_coco(tmp_path)
    dataset = COCODataset(
        str(tmp_path), "val2017", categories=["dog", "person"], cache_dir=str(tmp_path / "c")
    )
    assert dataset.class_names == ["background", "dog", "person"]
    rank = {cid: i + 1 for i, cid in enumerate(sorted(fixtures.COCO_CATEGORIES))}  # all-80 labels
    # person=1, dog=18; the crowd is of cars, a category not chosen: background, not ignore.
    remap = {0: 0, rank[1]: 2, rank[18]: 1, 255: 0, -1: -1}
    subset = {name: np.vectorize(remap.get)(truth) for name, truth in expected["val2017"].items()}
    assert_masks(dataset, subset)
    voc = COCODataset(str(tmp_path), "val2017", categories="voc", cache_dir=str(tmp_path / "c"))
    assert len(voc.class_names) == 21 and voc.class_names[15] == "person"
    with pytest.raises(DataError, match=r"\['unicorn'\] not in"):
        COCODataset(str(tmp_path), "val2017", categories=["unicorn"])


def test_coco_masks_are_cached_on_first_use(tmp_path):
    fixtures.make_coco(tmp_path, counts={"val2017": 2})
    cache = tmp_path / "cache"
    dataset = COCODataset(str(tmp_path), "val2017", cache_dir=str(cache))
    assert not list(cache.glob("*/*.png"))
    first = dataset.load_mask(0)
    cached = list(cache.glob("*/*.png"))
    assert len(cached) == 1
    np.testing.assert_array_equal(read_mask(cached[0]), first)
    # A second read uses the cache file, not the annotations: prove it by altering the file.
    Image.fromarray(np.full_like(first, 7)).save(cached[0])
    assert (dataset.load_mask(0) == 7).all()
    # Other categories -> another cache folder (the key holds the conversion settings).
    COCODataset(str(tmp_path), "val2017", categories=["dog"], cache_dir=str(cache)).load_mask(0)
    assert len(list(cache.iterdir())) == 2


def test_coco_missing_annotation_file_explains_layout(tmp_path):
    with pytest.raises(DataError, match="instances_train2017.json"):
        COCODataset(str(tmp_path), "train2017")


@pytest.mark.parametrize(
    "mode,array",
    [
        ("L", np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 256),
        ("RGBA", np.random.default_rng(0).integers(0, 256, (48, 64, 4))),
        ("I;16", np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 20),
    ],
)
def test_read_image_converts_grayscale_rgba_and_16bit_to_rgb8(tmp_path, mode, array):
    path = tmp_path / "image.png"
    if mode == "I;16":
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    image = read_image(path)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    if mode == "L":
        assert (image == array[..., None]).all()
    elif mode == "RGBA":
        assert (image == array[..., :3]).all()  # alpha dropped, colours kept
    else:  # 16-bit scaled to 8 bits: 0 -> 0, 65535 -> 255, monotone
        np.testing.assert_allclose(image[..., 0], array / 65535 * 255, atol=1)


def test_read_image_refuses_float_and_garbage(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="mode 'F'"):
        read_image(tmp_path / "f.tif")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "bad.png")


def test_rgb_mask_is_refused_with_the_fix(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="mask is RGB.*Convert colour-coded masks"):
        read_mask(tmp_path / "m.png")


def test_each_format_defines_its_classes_and_splits(tmp_path):
    fixtures.make_folder(tmp_path / "folder", counts={"train": 1, "val": 1})
    assert FolderDataset.defined_classes(root=str(tmp_path / "folder")) == ["c0", "c1", "c2"]
    assert FolderDataset.find_splits(root=str(tmp_path / "folder")) == ["train", "val"]
    assert FolderDataset.defined_classes(root=str(tmp_path)) is None  # no classes.txt
    fixtures.make_voc(tmp_path / "voc", counts={"train": 1, "val": 1})
    assert len(VOCDataset.defined_classes(root=str(tmp_path / "voc"))) == 21
    assert VOCDataset.find_splits(root=str(tmp_path / "voc")) == ["train", "val"]
    fixtures.make_ade20k(tmp_path / "ade", counts={"training": 1, "validation": 1})
    assert len(ADE20KDataset.defined_classes()) == 150
    assert len(ADE20KDataset.defined_classes(reduce_zero_label=False)) == 151
    assert ADE20KDataset.find_splits(root=str(tmp_path / "ade")) == ["train", "val"]
    fixtures.make_cityscapes(tmp_path / "cs", counts={"train": 1, "val": 1})
    assert CityscapesDataset.find_splits(root=str(tmp_path / "cs")) == ["train", "val"]
    fixtures.make_coco(tmp_path / "coco", counts={"train2017": 1, "val2017": 1})
    names = COCODataset.defined_classes(root=str(tmp_path / "coco"), split="train2017")
    assert names[:3] == ["background", "person", "bicycle"] and len(names) == 81
    assert COCODataset.find_splits(root=str(tmp_path / "coco")) == ["train2017", "val2017"]


def _coco_file(path, categories, pad=0):
    """An annotation file with ``categories`` first, ``pad`` bytes of images after them."""
    images = [{"id": i, "file_name": "x" * 90} for i in range(pad // 100)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"categories": categories, "images": images, "annotations": []}))


def test_coco_categories_are_read_from_either_end_of_a_large_file(tmp_path):
    from segexp.data.datasets.coco import read_categories

    categories = [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}]
    _coco_file(tmp_path / "head.json", categories, pad=3 << 20)  # categories in the first MB
    assert read_categories(tmp_path / "head.json") == categories
    images = [{"id": i, "file_name": "x" * 90} for i in range(30000)]
    (tmp_path / "tail.json").write_text(json.dumps({"images": images, "categories": categories}))
    assert read_categories(tmp_path / "tail.json") == categories
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="bad.json: cannot read the annotation JSON's categories"):
        read_categories(tmp_path / "bad.json")


def test_coco_background_category_is_class_zero(tmp_path):
    from segexp.data.datasets.coco import class_layout

    cats = [
        {"id": 5, "name": "crack"},
        {"id": 0, "name": "_background_"},
        {"id": 2, "name": "rust"},
    ]
    names, label_of = class_layout(cats, None, tmp_path / "a.json")
    assert names == ["_background_", "rust", "crack"] and label_of == {0: 0, 2: 1, 5: 2}
    names, label_of = class_layout(cats[::2], None, tmp_path / "a.json")  # no background
    assert names == ["background", "rust", "crack"] and label_of == {2: 1, 5: 2}


@pytest.mark.parametrize(
    ("data", "args", "expected"),
    [
        ("folder", [], 3),
        ("voc", [], 21),
        ("ade20k", ["data.dataset.reduce_zero_label=false"], 151),
        ("cityscapes", [], 19),
        ("coco", [], 81),
        ("coco", ["data.dataset.categories=[dog,person]"], 3),
        ("coco", ["data.dataset.categories=voc"], 21),
    ],
)
def test_num_classes_null_is_filled_from_the_dataset(compose_cfg, tmp_path, data, args, expected):
    from segexp.data.classes import resolve_num_classes

    builder = {"ade20k": fixtures.make_ade20k, "voc": fixtures.make_voc}.get(data)
    counts = {"ade20k": {"training": 1}, "voc": {"train": 1}, "coco": {"train2017": 1}}
    (builder or fixtures.BUILDERS[data])(tmp_path / data, counts=counts.get(data, {"train": 1}))
    cfg = compose_cfg([f"data={data}", f"data.root={tmp_path / data}", *args])
    assert cfg.data.num_classes is None
    assert resolve_num_classes(cfg.data) == expected and cfg.data.num_classes == expected


def test_num_classes_disagreement_or_no_source_is_one_clear_error(compose_cfg, tmp_path):
    from segexp.data.classes import ClassesError, resolve_num_classes
    from segexp.run.lifecycle import record_config

    fixtures.make_folder(tmp_path / "d", counts={"train": 1})
    cfg = compose_cfg(["data=folder", f"data.root={tmp_path / 'd'}", "data.num_classes=5"])
    with pytest.raises(ClassesError, match=r"data.num_classes=5 but .*/d/classes.txt defines 3"):
        resolve_num_classes(cfg.data)
    (tmp_path / "d" / "classes.txt").unlink()
    assert resolve_num_classes(cfg.data) == 5  # no source: the user's number stands
    cfg = compose_cfg(["data=folder", f"data.root={tmp_path / 'd'}"])
    with pytest.raises(ClassesError) as error:
        resolve_num_classes(cfg.data)
    assert "\n" not in str(error.value) and "data.num_classes=N" in str(error.value)
    assert resolve_num_classes(cfg.data, default=4) == 4  # evaluate.py: the checkpoint's
    # The run folder's saved config gets the filled value, and only that.
    saved = tmp_path / "run" / ".hydra" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("data:\n  num_classes: null\n  root: /x\nseed: 1\n")
    filled = OmegaConf.create({"data": {"num_classes": 4}})
    record_config(saved.parent.parent, filled, None)
    assert saved.read_text() == "data:\n  num_classes: 4\n  root: /x\nseed: 1\n"


def _move_coco_images(root, split: str, names: list[str]) -> dict:
    """Rename the split's annotated images to ``names`` (paths under the split folder)."""
    json_path = root / "annotations" / f"instances_{split}.json"
    coco = json.loads(json_path.read_text())
    for info, name in zip(coco["images"], names, strict=False):
        (root / split / name).parent.mkdir(parents=True, exist_ok=True)
        (root / split / info["file_name"]).rename(root / split / name)
        info["file_name"] = name
    json_path.write_text(json.dumps(coco))
    return coco


def test_coco_same_file_name_in_two_folders_keeps_two_masks(tmp_path):
    """Issue 29: masks were cached by file stem, so b/frame.jpg trained on a/frame.jpg's mask."""
    expected = fixtures.make_coco(tmp_path, counts={"val2017": 2})["val2017"]
    coco = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    truths = [expected[f"{info['id']:012d}"] for info in coco["images"][:2]]
    _move_coco_images(tmp_path, "val2017", ["a/frame.jpg", "b/frame.jpg"])
    dataset = COCODataset(str(tmp_path), "val2017", cache_dir=str(tmp_path / "cache"))
    for index, truth in enumerate(truths):
        dataset.load_mask(index)  # fills the cache; the second read below comes from it
        mask = dataset.load_mask(index)
        known = truth >= 0
        np.testing.assert_array_equal(mask[known], truth[known])
    assert not np.array_equal(truths[0], truths[1])


def test_coco_rle_of_another_size_names_annotation_and_image(tmp_path):
    fixtures.make_coco(tmp_path, counts={"val2017": 1})
    json_path = tmp_path / "annotations" / "instances_val2017.json"
    coco = json.loads(json_path.read_text())
    rle = next(a for a in coco["annotations"] if isinstance(a["segmentation"], dict)
               and isinstance(a["segmentation"]["counts"], str))  # fmt: skip
    rle["segmentation"]["size"] = [rle["segmentation"]["size"][0] + 5, 7]
    json_path.write_text(json.dumps(coco))
    dataset = COCODataset(str(tmp_path), "val2017", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=rf"annotation id {rle['id']} has an RLE of size") as error:
        dataset.load_mask(0)
    assert coco["images"][0]["file_name"] in str(error.value)
