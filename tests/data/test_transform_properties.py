"""Property test of the joint image+mask augmentation (segexp.data.transforms): through
every geometric transform of every ``augment/`` config, each pixel's label follows its pixel.

The image carries its own pixel coordinates (red = row, green = column, blue = 255 on real
pixels, 0 on padding), so after the pipeline each output pixel says where it came from,
and its mask label must be the source mask's label there. Photometric transforms (colour,
blur) change pixel values only and leave the mask alone; they are left out here.
"""

from __future__ import annotations

import random

import albumentations as A
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import open_dict

from segexp.data.transforms import build_transform
from tests.conftest import CONF

IGNORE = 255
AUGMENTS = sorted(path.stem for path in (CONF / "augment").glob("*.yaml"))


def geometric_transforms(name: str) -> dict[str, list]:
    """{stage: the DualTransforms of augment=<name>}, crops made small (24 px) for speed."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"augment={name}"])
    with open_dict(cfg):
        if "crop_size" in cfg.augment:
            cfg.augment.crop_size = 24  # val_max_size follows it
    assert cfg.data.ignore_index == IGNORE
    return {
        stage: [t for t in instantiate(cfg.augment[stage]) if isinstance(t, A.DualTransform)]
        for stage in ("train", "val")
    }


PIPELINES = {name: geometric_transforms(name) for name in AUGMENTS}


@st.composite
def samples(draw):
    """(image encoding its coordinates, mask of label blocks, seed)."""
    height, width = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    grid = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    labels = np.array(draw(st.lists(st.integers(0, 5), min_size=grid[0] * grid[1], max_size=16)))
    blocks = labels[: grid[0] * grid[1]].reshape(grid)
    rows = np.arange(height) * grid[0] // height
    cols = np.arange(width) * grid[1] // width
    mask = blocks[np.ix_(rows, cols)].astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(height)[:, None]
    image[..., 1] = np.arange(width)[None, :]
    image[..., 2] = 255
    return image, mask, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("stage", ["train", "val"])
@pytest.mark.parametrize("name", AUGMENTS)
@settings(max_examples=30)
@given(sample=samples())
def test_every_label_follows_its_pixel(name, stage, sample):
    image, mask, seed = sample
    transform = build_transform(PIPELINES[name][stage], mean=(0, 0, 0), std=(1, 1, 1))
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(image=image, mask=mask)
    pixels = np.rint(out["image"].numpy() * 255).astype(int)  # (3, H, W), as it came in
    labels = np.asarray(out["mask"])
    assert labels.shape == pixels.shape[1:]
    # No label is made up (a mask interpolated like an image would blend ids).
    assert set(np.unique(labels).tolist()) <= set(np.unique(mask).tolist()) | {IGNORE}
    assert (labels[pixels[2] == 0] == IGNORE).all()  # padding is ignored, never a class
    checked = 0
    for y, x in np.argwhere(pixels[2] == 255):
        row, col = pixels[0, y, x], pixels[1, y, x]
        around = mask[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
        if (around == around.flat[0]).all():  # away from a block edge, where rounding may differ
            assert labels[y, x] == around.flat[0], (y, x, row, col)
            checked += 1
    assert checked > 0 or not (pixels[2] == 255).any()
