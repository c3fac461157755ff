"""python -m segexp.browse (segexp.data.browse, segexp.data.viz): a PNG grid of augmented samples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segexp.cli.argv import translate_legacy_flags
from segexp.data.browse import BrowseError, browse
from segexp.data.viz import overlay, palette
from tests import fixtures_data as fixtures
from tests.conftest import run_script


def test_overlay_whitens_ignore_and_tints_classes():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 255]])
    out = overlay(image, mask, alpha=0.5, ignore_index=255)
    assert (out[1, 1] == 255).all()
    assert out[0, 1].tolist() == [round(0.5 * 100 + 0.5 * 128), 50, 50]  # class 1: VOC dark red
    assert not np.array_equal(out[0, 1], out[1, 0])  # classes 1 and 2 get different colours
    assert palette().shape == (256, 3) and np.array_equal(palette(21), palette()[:21])


def test_legacy_flags_become_keys():
    argv = ["data=voc", "--num", "3", "--split=val", "--seed", "7", "--out", "my grid.png", "--cfg"]
    assert translate_legacy_flags(argv) == [
        "data=voc", "num=3", "split=val", "seed=7", "out='my grid.png'", "--cfg",
    ]  # fmt: skip


def test_browse_writes_a_grid_for_a_real_format(tmp_path, compose_cfg):
    fixtures.make_voc(tmp_path / "voc", counts={"train": 3, "val": 1})
    out = tmp_path / "grid.png"
    cfg = compose_cfg(
        ["data=voc", f"data.root={tmp_path / 'voc'}", "augment=strong", "augment.crop_size=64",
         "num=6", f"out={out}"],
        config_name="browse",
    )  # fmt: skip
    assert browse(cfg) == (out, 6, "train")
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * (192 + 14), 4 * 2 * 192, 3)  # 6 samples -> 2 rows of 4 pairs
    left, right = grid[14:206, :192], grid[14:206, 192:384]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 10  # the overlay is drawn


def test_bad_split_is_a_user_error(compose_cfg):
    with pytest.raises(BrowseError, match="split=validation: valid splits are train, val, test"):
        browse(compose_cfg(["split=validation"], config_name="browse"))


@pytest.mark.slow
def test_cli_keeps_the_old_flags_and_writes_in_the_run_folder(tmp_path):
    fixtures.make_voc(tmp_path / "voc", counts={"train": 1, "val": 2})
    run = tmp_path / "run"
    result = run_script(
        "-m", "segexp.browse", "data=voc", f"data.root={tmp_path / 'voc'}", "augment=none",
        "--num", "3", "--split", "val", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 samples, split val" in result.stdout
    assert Image.open(run / "voc-none.png").size == (4 * 2 * 192, 192 + 14)
    assert (run / ".hydra" / "config.yaml").is_file()
