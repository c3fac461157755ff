"""Class weights from label frequencies: the numbers, the cache, and loss.weight=auto."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segexp.data.class_weights import (
    cached_class_weights,
    fill_auto_weights,
    label_counts,
    median_frequency_weights,
)
from segexp.data.datasets import FolderDataset
from tests import fixtures_data as fixtures


def test_median_frequency_by_hand():
    # class 0: 300 px in images totalling 400 px (f=0.75); class 1: 100 of 400 (0.25);
    # class 2: 10 of 100 (0.1); class 3 absent -> 1.0. median(0.75, 0.25, 0.1) = 0.25.
    weights = median_frequency_weights(np.array([300, 100, 10, 0]), np.array([400, 400, 100, 0]))
    assert weights == pytest.approx([1 / 3, 1.0, 2.5, 1.0])


def test_label_counts_skip_ignore_and_out_of_range(tmp_path):
    expected = fixtures.make_folder(tmp_path, counts={"train": 3})
    dataset = FolderDataset(str(tmp_path), "train")
    counts, _ = label_counts(dataset, 2, ignore_index=1)  # pretend: 2 classes, 1 = ignore
    masks = np.concatenate([m.ravel() for m in expected["train"].values()])
    assert counts.tolist() == [int((masks == 0).sum()), 0]  # label 2 is out of range: skipped


def test_weights_are_cached_and_refreshed_when_files_change(tmp_path):
    fixtures.make_folder(tmp_path / "d", counts={"train": 3})
    dataset = FolderDataset(str(tmp_path / "d"), "train")
    first = cached_class_weights(dataset, 3, 255, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    payload = json.loads(cache_file.read_text())
    payload["weights"] = [9.0, 9.0, 9.0]
    cache_file.write_text(json.dumps(payload))
    assert cached_class_weights(dataset, 3, 255, tmp_path / "cache") == [
        9.0,
        9.0,
        9.0,
    ]  # read, not recomputed
    mask = next((tmp_path / "d" / "masks" / "train").iterdir())
    os.utime(mask, ns=(1, 1))  # a changed file (new mtime) -> a new key -> recomputed
    assert cached_class_weights(dataset, 3, 255, tmp_path / "cache") == first


def numpy_median_frequency(masks: list[np.ndarray], num_classes: int) -> list[float]:
    """Eigen & Fergus's weights from the masks, a class at a time: freq(c) = pixels of c /
    pixels of the masks that hold c; weight = median(freq) / freq (every class present)."""
    freq = []
    for c in range(num_classes):
        holding = [m for m in masks if (m == c).any()]
        freq.append(sum(int((m == c).sum()) for m in holding) / sum(m.size for m in holding))
    return [float(np.median(freq) / f) for f in freq]


@pytest.mark.parametrize(
    ("overrides", "in_sum"),
    [
        (["loss=ce", "loss.weight=auto"], False),
        (["loss.losses.ce.weight=auto"], True),  # the default ce_dice: its CE half
    ],
)
def test_loss_weight_auto_fills_the_ce_weights(compose_cfg, tmp_path, overrides, in_sum):
    masks = list(fixtures.make_folder(tmp_path / "d")["train"].values())
    data = ["data=folder", f"data.root={tmp_path / 'd'}", "data.num_classes=3"]
    cfg = compose_cfg([*data, *overrides])
    datamodule = instantiate(cfg.data)
    loss = fill_auto_weights(
        OmegaConf.to_container(cfg.loss, resolve=True), datamodule, tmp_path / "cw"
    )
    expected = numpy_median_frequency(masks, 3)
    assert len(set(expected)) == 3  # the fixture's classes are not balanced
    criterion, filled = instantiate(loss), loss
    if in_sum:
        criterion, filled = criterion.losses["ce"], loss["losses"]["ce"]
    assert filled["weight"] == pytest.approx(expected, abs=1e-6)
    assert criterion.weight.tolist() == pytest.approx(expected, abs=1e-6)
    # "auto" anywhere in the config is filled; other values pass through unchanged.
    nested = fill_auto_weights(
        {"losses": {"ce": {"weight": "auto"}}, "w": [1]}, datamodule, tmp_path / "cw"
    )
    assert nested["w"] == [1] and list(nested["losses"]) == ["ce"]
    assert nested["losses"]["ce"]["weight"] == pytest.approx(expected, abs=1e-6)
