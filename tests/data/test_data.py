"""FolderDataset and SegDataModule: loading, joint transforms, early errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.data.datamodule import SegDataModule
from segexp.data.datasets import DataError, FolderDataset
from segexp.errors import UserError


def write_dataset(root, splits=("train", "val", "test"), count=3, size=(40, 48), num_classes=3):
    rng = np.random.default_rng(0)
    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            mask = rng.integers(0, num_classes, size=size, dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def datamodule(root, num_classes=3, **kwargs):
    from functools import partial

    return SegDataModule(
        dataset=partial(FolderDataset, root=str(root)),
        num_classes=num_classes,
        root=str(root),
        **kwargs,
    )


def test_folder_dataset_returns_tensors(tmp_path):
    dm = datamodule(write_dataset(tmp_path), batch_size=2, pad_to_multiple=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 40, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 40, 48) and batch["mask"].dtype == torch.long
    raw = np.asarray(Image.open(tmp_path / "masks" / "val" / "0.png"))
    dm_val = next(iter(dm.val_dataloader()))
    assert np.array_equal(dm_val["mask"][0].numpy(), raw)  # no transform changes labels


def test_batches_of_mixed_sizes_pad_with_ignore_index(tmp_path):
    write_dataset(tmp_path, splits=("val",), count=2)
    other = np.random.default_rng(1)
    Image.fromarray(other.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(
        tmp_path / "images/val/1.png"
    )
    Image.fromarray(np.ones((70, 30), np.uint8)).save(tmp_path / "masks/val/1.png")
    dm = datamodule(tmp_path, batch_size=2)  # default: pad to a multiple of 32
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 96, 64) and batch["mask"].shape == (2, 96, 64)
    raw = np.asarray(Image.open(tmp_path / "masks/val/0.png"))
    assert np.array_equal(batch["mask"][0, :40, :48].numpy(), raw)
    assert (batch["mask"][0, 40:] == 255).all() and (batch["mask"][0, :, 48:] == 255).all()
    assert (batch["mask"][1, :70, :30] == 1).all() and (batch["mask"][1, 70:] == 255).all()
    assert (batch["image"][1, :, 70:] == 0).all() and batch["name"] == ["0", "1"]


def test_empty_split_is_an_error_not_an_empty_epoch(tmp_path):
    write_dataset(tmp_path)
    for path in (tmp_path / "images" / "val").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"split 'val' .* is empty.*data.val_split"):
        datamodule(tmp_path).setup("fit")


def test_unreadable_first_image_names_the_file(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "images" / "train" / "0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"images/train/0.png: cannot read image"):
        datamodule(tmp_path).setup("fit")


def test_class_names_come_from_the_format_before_setup(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    from tests.fixtures_data import make_voc

    make_voc(tmp_path / "voc", counts={"train": 2, "val": 1})
    dm = instantiate(compose_cfg(["data=voc", f"data.root={tmp_path / 'voc'}"]).data)
    assert dm.class_names[:2] == ["background", "aeroplane"] and len(dm.class_names) == 21


@pytest.mark.parametrize("fmt", ["voc", "cityscapes", "ade20k", "coco"])
def test_every_format_config_loads_a_batch(compose_cfg, tmp_path, fmt):
    from hydra.utils import instantiate

    from tests.fixtures_data import BUILDERS

    BUILDERS[fmt](tmp_path / fmt)
    cfg = compose_cfg([f"data={fmt}", f"data.root={tmp_path / fmt}", "data.batch_size=2"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # 48x64 fixtures: unpadded, or padded by a format whose config pads (mask: ignore_index)
    assert batch["image"].shape[:2] == (2, 3) and tuple(batch["image"].shape[-2:]) in (
        (48, 64),
        (64, 64),
    )
    labels = set(batch["mask"].unique().tolist())
    assert labels <= {*range(dm.num_classes), 255} and len(labels) > 1


def test_first_sample_of_a_format_is_checked(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    from tests.fixtures_data import make_ade20k

    make_ade20k(tmp_path, counts={"training": 2, "validation": 1})
    first = sorted((tmp_path / "ADEChallengeData2016/annotations/training").iterdir())[0]
    Image.fromarray(np.full((5, 5), 3, np.uint8)).save(first)
    dm = instantiate(compose_cfg(["data=ade20k", f"data.root={tmp_path}"]).data)
    with pytest.raises(DataError, match=f"{first.name} is 5x5"):
        dm.setup("fit")


def test_missing_mask_names_the_image(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "masks" / "train" / "1.png").unlink()
    with pytest.raises(DataError, match=r"images/train/1.png: no mask"):
        FolderDataset(str(tmp_path), "train")


def test_label_out_of_range_is_reported_with_file_and_fix(tmp_path):
    write_dataset(tmp_path, num_classes=5)
    dm = datamodule(tmp_path, num_classes=3)
    with pytest.raises(
        DataError, match=r"data.num_classes=3 but mask .*masks/train/0.png contains label"
    ):
        dm.setup("fit")


def test_size_mismatch_is_reported(tmp_path):
    write_dataset(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "train" / "0.png")
    with pytest.raises(DataError, match="same size"):
        datamodule(tmp_path).setup("fit")


def test_ignore_index_is_a_valid_label(tmp_path):
    write_dataset(tmp_path)
    mask = np.zeros((40, 48), np.uint8)
    mask[:5] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "train" / "0.png")
    datamodule(tmp_path).setup("fit")


def test_missing_split_folder_is_explained(tmp_path):
    write_dataset(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="no folder"):
        datamodule(tmp_path).setup("fit")


def test_scanner_checks_sizes_labels_and_rgb():
    from segexp.data.scan import LabelCounts, bad_labels, check_arrays, label_histogram

    image = np.zeros((4, 5, 3), np.uint8)
    mask = np.array([[0, 1, 255, 2, 2]] * 4, np.uint8)
    assert check_arrays(image, mask, "i.png", "m.png", 3, 255) == []
    assert bad_labels(mask, 2, 255) == [2]  # 255 is ignore, 2 is out of range
    assert label_histogram(mask) == {0: 4, 1: 4, 2: 8, 255: 4}
    (size,) = check_arrays(np.zeros((5, 5, 3), np.uint8), mask, "i.png", "m.png", 3, 255)
    assert size.kind == "size mismatch" and "i.png is 5x5 but its mask m.png is 5x4" in size.message
    (rgb,) = check_arrays(image, np.zeros((4, 5, 3), np.uint8), "i.png", "m.png", 3, 255)
    assert rgb.kind == "rgb mask" and "m.png: mask is RGB" in rgb.message
    stats = LabelCounts(3, ignore_index=255)
    stats.add(mask)
    stats.add(np.array([[7, 0]]))
    assert stats.counts.tolist() == [5, 4, 8] and stats.ignored == 4
    assert stats.image_pixels.tolist() == [22, 20, 20] and stats.values[7] == 1


def test_bad_sample_anywhere_in_the_split_is_an_error_naming_it(tmp_path):
    write_dataset(tmp_path)
    bad = np.zeros((40, 48), np.uint8)
    bad[3, 3] = 9
    Image.fromarray(bad).save(
        tmp_path / "masks" / "val" / "2.png"
    )  # the last sample, not the first
    dm = datamodule(tmp_path, batch_size=1)
    dm.setup("fit")  # the first sample is fine
    with pytest.raises(DataError, match=r"masks/val/2.png contains label\(s\) \[9\]"):
        list(dm.val_dataloader())


def test_skip_drops_bad_samples_and_keeps_batches_non_empty(tmp_path):
    write_dataset(tmp_path, count=4)
    (tmp_path / "images" / "val" / "1.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "val" / "2.png")
    dm = datamodule(tmp_path, batch_size=2, pad_to_multiple=1, on_bad_sample="skip")
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [b["name"] for b in batches] == [["0"], ["3"]]
    assert "1.png: cannot read image" in batches[0]["skipped"][0]
    assert "is 48x40 but its mask" in batches[1]["skipped"][0]
    dm.on_before_batch_transfer(batches[0], 0)  # no trainer: counted as val
    assert "skipped" not in batches[0] and len(dm.skipped["val"]) == 1
    # A batch whose samples were all bad holds one placeholder that counts nowhere.
    (tmp_path / "images" / "val" / "0.png").write_bytes(b"garbage")
    dm = datamodule(tmp_path, batch_size=2, on_bad_sample="skip")
    dm.setup("validate")
    first = next(iter(dm.val_dataloader()))
    assert first["image"].shape[0] == 1 and (first["mask"] == 255).all()
    assert len(first["skipped"]) == 2
    with pytest.raises(UserError, match="on_bad_sample='maybe'"):
        datamodule(tmp_path, on_bad_sample="maybe")


def test_test_split_defaults_to_test_else_val_with_a_notice(tmp_path, capsys):
    write_dataset(tmp_path / "full")
    dm = datamodule(tmp_path / "full")
    dm.setup("test")
    assert dm.datasets["test"].split == "test"
    write_dataset(tmp_path / "two", splits=("train", "val"))
    dm = datamodule(tmp_path / "two")
    dm.setup("test")
    assert dm.datasets["test"].split == "val"
    assert f"no 'test' split in {tmp_path / 'two'} (found: train, val)" in capsys.readouterr().out
    dm = datamodule(tmp_path / "two", test_split="test")  # an explicit choice is kept
    with pytest.raises(DataError, match="no folder"):
        dm.setup("test")


def test_num_classes_none_comes_from_classes_txt(tmp_path):
    write_dataset(tmp_path, num_classes=4)
    (tmp_path / "classes.txt").write_text("bg\na\nb\nc\n")
    assert datamodule(tmp_path, num_classes=None).num_classes == 4
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(UserError, match="set data.num_classes=N .* or write classes.txt"):
        datamodule(tmp_path, num_classes=None)
