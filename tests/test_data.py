"""FolderDataset and SegDataModule: loading, joint transforms, early errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.data import SegDataModule
from segexp.datasets import DataError, FolderDataset


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

    return SegDataModule(dataset=partial(FolderDataset, root=str(root)), num_classes=num_classes, **kwargs)


def test_folder_dataset_returns_tensors(tmp_path):
    dm = datamodule(write_dataset(tmp_path), batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 40, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 40, 48) and batch["mask"].dtype == torch.long
    raw = np.asarray(Image.open(tmp_path / "masks" / "val" / "0.png"))
    dm_val = next(iter(dm.val_dataloader()))
    assert np.array_equal(dm_val["mask"][0].numpy(), raw)  # no transform changes labels


def test_missing_mask_names_the_image(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "masks" / "train" / "1.png").unlink()
    with pytest.raises(DataError, match=r"images/train/1.png: no mask"):
        FolderDataset(str(tmp_path), "train")


def test_label_out_of_range_is_reported_with_file_and_fix(tmp_path):
    write_dataset(tmp_path, num_classes=5)
    dm = datamodule(tmp_path, num_classes=3)
    with pytest.raises(DataError, match=r"data.num_classes=3 but mask .*masks/train/0.png contains label"):
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
