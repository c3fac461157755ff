"""segexp.data.browse: a PNG grid of augmented samples with masks overlaid."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segexp.data.browse import main, overlay
from tests import fixtures_data as fixtures


def test_overlay_whitens_ignore_and_tints_classes():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 255]])
    out = overlay(image, mask, ignore_index=255, alpha=0.5)
    assert (out[1, 1] == 255).all()
    assert not np.array_equal(out[0, 1], out[1, 0])  # classes 1 and 2 get different colours


def test_browse_writes_a_grid_for_a_real_format(tmp_path, capsys):
    fixtures.make_voc(tmp_path / "voc", counts={"train": 3, "val": 1})
    out = tmp_path / "grid.png"
    code = main(
        ["data=voc", f"data.root={tmp_path / 'voc'}", "augment=strong", "augment.crop_size=64",
         "--num", "6", "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and out.is_file() and "6 samples" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * (192 + 14), 4 * 2 * 192, 3)  # 6 samples -> 2 rows of 4 pairs
    left, right = grid[14:206, :192], grid[14:206, 192:384]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 10  # the overlay is drawn
