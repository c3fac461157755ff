"""Augmentation pipelines from conf/augment: image and mask stay aligned; padding is ignore."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate

IGNORE = 255
# Distinct, far-apart colours with no channel at 0, so black pixels can only be padding.
PALETTE = np.array(
    [[200, 60, 60], [60, 200, 60], [60, 60, 200], [220, 220, 60], [60, 220, 220]], np.uint8
)


def coded_pair(size=(40, 56), block=8, seed=0):
    """A mask of 8x8 blocks of random classes and the image that encodes it (colour = class)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), size=(-(-size[0] // block), -(-size[1] // block)))
    mask = np.kron(blocks, np.ones((block, block), dtype=np.int64))[: size[0], : size[1]].astype(
        np.uint8
    )
    return PALETTE[mask], mask


def decode(image):
    """The class each pixel's colour encodes (nearest palette colour). (H, W, 3) -> (H, W)"""
    distance = np.linalg.norm(
        image[..., None, :].astype(float) - PALETTE[None, None].astype(float), axis=-1
    )
    return distance.argmin(-1)


def agreement(image, mask):
    """Fraction of labelled, non-padding pixels whose colour encodes their mask label."""
    valid = (mask != IGNORE) & (image.sum(-1) > 0)
    return float((decode(image)[valid] == mask[valid]).mean())


def strong(compose_cfg, *overrides):
    cfg = compose_cfg(["augment=strong", "augment.crop_size=48", *overrides])
    return (
        cfg,
        [instantiate(t) for t in cfg.augment.train],
        [instantiate(t) for t in cfg.augment.val],
    )


def test_strong_geometric_transforms_keep_image_and_mask_aligned(compose_cfg):
    _, train, _ = strong(compose_cfg)
    geometric = [t for t in train if isinstance(t, A.DualTransform)]
    assert {type(t).__name__ for t in geometric} >= {
        "RandomScale",
        "PadIfNeeded",
        "RandomCrop",
        "Rotate",
    }
    pipeline = A.Compose(geometric, seed=0)
    for seed in range(12):
        image, mask = coded_pair(seed=seed)
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape[:2] == out["mask"].shape == (48, 48)
        # Bilinear resampling blends colours only along block edges.
        assert agreement(out["image"], out["mask"]) > 0.9, f"seed {seed}"
    # The same check catches a misaligned pair (mask flipped on its own): it can fail.
    out = pipeline(image=image, mask=mask)
    assert agreement(out["image"], np.ascontiguousarray(out["mask"][:, ::-1])) < 0.6


def test_full_strong_pipeline_runs_and_keeps_labels_valid(compose_cfg):
    _, train, _ = strong(compose_cfg)
    pipeline = A.Compose(train, seed=1)
    image, mask = coded_pair()
    for _ in range(5):
        out = pipeline(image=image, mask=mask)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (48, 48, 3)
        assert set(np.unique(out["mask"])) <= {*range(len(PALETTE)), IGNORE}


def test_padding_fills_the_mask_with_ignore_index_never_a_class(compose_cfg):
    _, train, _ = strong(compose_cfg, "augment.crop_size=64")  # larger than the 40x56 input
    pad_and_crop = A.Compose(
        [t for t in train if type(t).__name__ in ("PadIfNeeded", "RandomCrop")], seed=0
    )
    image, mask = coded_pair()
    out = pad_and_crop(image=image, mask=mask)
    padded = out["image"].sum(-1) == 0  # the palette has no black: black is padding
    assert padded.sum() == 64 * 64 - 40 * 56
    assert (out["mask"][padded] == IGNORE).all()
    assert (out["mask"][~padded] != IGNORE).all()


def test_ignore_index_follows_data_config(compose_cfg):
    cfg, train, val = strong(compose_cfg, "data.ignore_index=77")
    fills = [t.fill_mask for t in [*train, *val] if hasattr(t, "fill_mask")]
    assert fills and all(fill == 77 for fill in fills)


def test_strong_val_resizes_and_pads_to_a_square(compose_cfg):
    _, _, val = strong(compose_cfg, "augment.val_max_size=32")
    image, mask = coded_pair(size=(40, 56))
    out = A.Compose(val)(image=image, mask=mask)
    assert out["image"].shape[:2] == out["mask"].shape == (32, 32)
    # 56 -> 32 wide, 40 -> 23 high: rows below are padding, all ignore.
    assert (out["mask"][23:] == IGNORE).all() and (out["mask"][:22] != IGNORE).all()


@pytest.mark.parametrize("option", ["none", "light"])
def test_light_and_none_train_lists_stay_cheap(compose_cfg, option):
    cfg = compose_cfg([f"augment={option}"])
    names = {t["_target_"].rsplit(".", 1)[-1] for t in cfg.augment.train}
    assert names <= {"HorizontalFlip", "VerticalFlip", "RandomRotate90"}
