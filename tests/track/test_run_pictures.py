"""Every run shows itself: the pictures train.py leaves in its run folder, whatever the logger."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.run.report import read_confusion_csv
from segexp.track.callbacks import SegImageLogger
from segexp.track.pictures import (
    GAP,
    HEADER,
    example_grid,
    legend_entries,
    plot_curves,
    tile_scale,
)
from tests.conftest import TINY, run_script

CLASSES = ["background", "circle", "square", "triangle", "star", "ring"]  # data=shapes


def test_example_grid_columns_and_legend() -> None:
    """image | ground truth | prediction per row; the legend lists only the classes shown."""
    images = np.full((2, 32, 48, 3), 200, dtype=np.uint8)
    masks = np.zeros((2, 32, 48), dtype=np.int64)
    masks[:, :, 24:] = 2
    masks[1, 0, 0] = 255  # an ignored pixel
    predictions = np.ones((2, 32, 48), dtype=np.int64)
    grid = example_grid(images, masks, predictions, ["bg", "a", "b", "c"], ignore_index=255)
    factor = tile_scale(48)
    tile_w, tile_h = 48 * factor, 32 * factor
    assert grid.shape[1] == 3 * tile_w + 4 * GAP
    assert grid.shape[0] > 2 * tile_h
    names = [name for name, _ in legend_entries([masks, predictions], ["bg", "a", "b", "c"], 255)]
    assert names == ["bg", "a", "b", "ignore"]  # c never shown: not in the legend
    # The image column is the image itself, enlarged; the masks columns are tinted.
    y = HEADER + 1  # the first row of tiles starts below the column titles
    np.testing.assert_array_equal(grid[y, GAP + 1], [200, 200, 200])
    assert not np.array_equal(grid[y, 2 * GAP + tile_w + 1], [200, 200, 200])


def test_plot_curves_png_and_nothing_without_history(tmp_path: Path) -> None:
    history = {
        0: {"train/loss": 2.0, "val/loss": 1.9, "val/mIoU": 0.1, "lr": 1e-3},
        1: {"val/mIoU": 0.2},
    }
    path = plot_curves(history, tmp_path / "curves.png")
    assert Image.open(path).size[0] > 600
    assert plot_curves({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_pictures_off_writes_no_confusion(tmp_path: Path) -> None:
    """callbacks.image_logger.pictures=false: no file in the run folder."""
    module = SimpleNamespace(last_confmat={"val": torch.eye(2)}, class_names=["a", "b"])
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=tmp_path, current_epoch=1, ckpt_path=None
    )
    assert SegImageLogger(pictures=False)._confusion(trainer, module, "val") == []
    assert list(tmp_path.iterdir()) == []
    files = SegImageLogger(pictures=True)._confusion(trainer, module, "val")
    assert sorted(f.name for f in files) == ["confusion.csv", "confusion.png"]


@pytest.mark.slow
def test_csv_run_leaves_its_pictures(tmp_path: Path) -> None:
    """train.py logger=csv, 2 epochs, images every epoch: examples per epoch, curves, confusions."""
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        *TINY,
        "logger=csv",
        "trainer.max_epochs=2",
        "callbacks.image_logger.every_n_epochs=1",
        f"hydra.run.dir={run}",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Lightning's own test table is gone: the test metrics are printed once (print_summary).
    assert result.stdout.count("test/mIoU") == 1, result.stdout

    examples = sorted((run / "val" / "examples").glob("*.png"))
    assert [p.name for p in examples] == ["epoch_000.png", "epoch_001.png"]
    first, second = (np.asarray(Image.open(p).convert("RGB")) for p in examples)
    tile = 64 * tile_scale(64)  # data.generate.image_size=64, enlarged
    assert first.shape == second.shape
    assert (
        first.shape[1] == 3 * tile + 4 * GAP and first.shape[0] > 4 * tile
    )  # 4 images (num_images)
    # The same validation images each time: the image column is identical, below the titles.
    below_title = slice(first.shape[0] // 4, first.shape[0] // 2)
    np.testing.assert_array_equal(
        first[below_title, GAP : GAP + tile], second[below_title, GAP : GAP + tile]
    )

    for stage in ("val", "test"):
        with Image.open(run / stage / "confusion.png") as picture:
            assert picture.size[0] > 300 and picture.size[1] > 300
        names, counts = read_confusion_csv(run / stage / "confusion.csv")
        assert names == CLASSES and counts.shape == (6, 6)
        assert counts.sum() == 4 * 64 * 64  # 4 images of 64 x 64, every pixel counted once
    with Image.open(run / "curves.png") as curves:
        assert curves.size[0] > 600 and curves.size[1] > 200
