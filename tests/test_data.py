"""FolderDataset and SegDataModule: loading, joint transforms, early errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.data.datamodule import SegDataModule
from segexp.data.datasets import DataError, FolderDataset


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
        dataset=partial(FolderDataset, root=str(root)), num_classes=num_classes, **kwargs
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
    assert labels <= {*range(cfg.data.num_classes), 255} and len(labels) > 1


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
