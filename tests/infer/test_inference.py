"""segexp.infer.engine: whole / sliding window / TTA / postprocess against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from segexp.data import viz
from segexp.data.viz import denormalize, overlay
from segexp.infer.engine import Inference, window_starts

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def conv_model(kernel: int = 3, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(3, classes, kernel, padding=kernel // 2).eval()


def flip_equivariant_model(classes: int = 4) -> nn.Module:
    """A conv whose kernels are mirror-symmetric left/right: f(flip(x)) == flip(f(x))."""
    model = conv_model(3, classes)
    with torch.no_grad():
        model.weight.copy_((model.weight + model.weight.flip(-1)) / 2)
    return model


def images(batch=2, height=37, width=53, seed=1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def reference_slide(model, x, crop, stride) -> torch.Tensor:
    """Sliding-window logits by the textbook loop (mmseg's window placement), in numpy."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    height, width = x.shape[-2:]
    total = np.zeros((x.shape[0], 4, height, width))
    count = np.zeros((height, width))
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    seen = set()
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            if (y1, x1) in seen:
                continue
            seen.add((y1, x1))
            with torch.no_grad():
                total[..., y1:y2, x1:x2] += model(x[..., y1:y2, x1:x2]).numpy()
            count[y1:y2, x1:x2] += 1
    assert count.min() >= 1 and count.max() > 1  # overlapping windows: the average matters
    return torch.from_numpy(total / count).float()


def test_window_starts_cover_every_pixel_and_end_flush():
    for size, crop, stride in [(100, 32, 20), (64, 64, 10), (30, 64, 16), (97, 33, 33)]:
        starts = window_starts(size, crop, stride)
        covered = np.zeros(size, bool)
        for start in starts:
            covered[start : start + crop] = True
        assert covered.all() and starts[0] == 0
        assert starts[-1] + min(crop, size) == size
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("crop", [53, 64, 200])
def test_slide_with_crop_at_least_the_image_equals_whole(crop):
    model, x = conv_model(), images()
    whole = Inference("whole").probs(model, x)
    slide = Inference("slide", crop_size=crop, stride=16).probs(model, x)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("crop", "stride"), [((16, 16), (8, 8)), ((20, 20), (13, 13)), ((16, 24), (10, 20))]
)
def test_slide_averages_overlapping_logits(crop, stride):
    model, x = conv_model(5), images()
    got = Inference("slide", crop_size=list(crop), stride=list(stride)).logits(model, x)
    torch.testing.assert_close(got, reference_slide(model, x, crop, stride), rtol=1e-5, atol=1e-5)
    # Zero padding at window borders makes slide differ from whole: the test can fail.
    assert not torch.allclose(got, model(x).detach(), atol=1e-4)


def test_slide_of_a_pixelwise_model_equals_whole():
    model, x = conv_model(1), images()
    got = Inference("slide", crop_size=12, stride=5).probs(model, x)
    torch.testing.assert_close(got, Inference("whole").probs(model, x))


def test_flip_tta_of_a_flip_equivariant_model_equals_plain():
    model, x = flip_equivariant_model(), images()
    plain = Inference("whole").probs(model, x)
    torch.testing.assert_close(Inference("whole", hflip=True).probs(model, x), plain)
    # Windows mirror onto windows only when the grid is symmetric: (50 - 20) % 10 == 0.
    x = images(height=40, width=50)
    slide = Inference("slide", crop_size=20, stride=10)
    flip_slide = Inference("slide", crop_size=20, stride=10, hflip=True)
    torch.testing.assert_close(flip_slide.probs(model, x), slide.probs(model, x))


def test_flip_and_scale_tta_average_probabilities():
    model, x = conv_model(), images(height=40, width=48)
    with torch.no_grad():
        plain = model(x).softmax(1)
        flipped = model(x.flip(-1)).flip(-1).softmax(1)
        half = nn.functional.interpolate(x, size=(20, 24), mode="bilinear", align_corners=False)
        half_logits = nn.functional.interpolate(
            model(half), size=(40, 48), mode="bilinear", align_corners=False
        )
    got = Inference("whole", hflip=True).probs(model, x)
    torch.testing.assert_close(got, (plain + flipped) / 2)
    got = Inference("whole", scales=[0.5, 1.0]).probs(model, x)
    torch.testing.assert_close(got, (half_logits.softmax(1) + plain) / 2)
    assert not torch.allclose(got, plain)  # the scale changed something: the test can fail
    torch.testing.assert_close(got.sum(1), torch.ones(2, 40, 48))


CALLS: list = []


def record_and_invert(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """A postprocess for tests: records its inputs, returns the probabilities reversed over classes."""
    CALLS.append((image.copy(), probs.copy()))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert probs.dtype == np.float32 and probs.shape[1:] == image.shape[:2]
    return probs[::-1].copy()


def test_postprocess_hook_sees_uint8_images_and_its_output_is_used():
    CALLS.clear()
    postprocess = instantiate(
        {"_target_": "tests.infer.test_inference.record_and_invert", "_partial_": True}
    )
    calls = CALLS
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 24, 28, 3), dtype=np.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    model = conv_model()
    plain = Inference("whole").probs(model, x)
    got = Inference("whole", postprocess=postprocess).probs(model, x, MEAN, STD)
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][0], pixels[0])  # un-normalised exactly
    np.testing.assert_allclose(calls[1][1], plain[1].numpy(), rtol=1e-6)
    torch.testing.assert_close(got, plain.flip(1))
    with pytest.raises(ValueError, match="mean/std"):
        Inference("whole", postprocess=postprocess).probs(model, x)


def test_denormalize_inverts_normalisation():
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, 5, 6, 3), dtype=np.uint8)
    x = (
        torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    np.testing.assert_array_equal(denormalize(x, MEAN, STD), pixels)


def test_inference_configs_compose_and_combine(compose_cfg):
    cfg = compose_cfg(
        ["ckpt_path=x", "inference=tta", "inference.mode=slide", "inference.crop_size=32"],
        config_name="eval",
    )
    inference = instantiate(cfg.inference)
    assert (inference.mode, inference.crop_size, inference.stride) == ("slide", (32, 32), (21, 21))
    assert inference.hflip and inference.scales == [0.75, 1.0, 1.25]
    cfg = compose_cfg(["ckpt_path=x", "input=y"], config_name="predict")
    assert instantiate(cfg.inference).mode == "whole" and not cfg.postprocess


def test_bad_inference_settings_are_clear_errors():
    with pytest.raises(ValueError, match="valid modes are whole, slide"):
        Inference("tiles")
    with pytest.raises(ValueError, match="needs inference.crop_size"):
        Inference("slide")
    with pytest.raises(ValueError, match="scales"):
        Inference(scales=[0.0])


def test_palette_and_overlay():
    palette = viz.palette(21)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len({tuple(c) for c in palette}) == 21  # distinct colours
    image = np.full((2, 2, 3), 200, np.uint8)
    mask = np.array([[0, 1], [1, 0]])
    blended = overlay(image, mask, palette, 0.25)
    assert blended[0, 1].tolist() == [round(0.75 * 200 + 0.25 * 128), 150, 150]
    assert blended[0, 0].tolist() == [150, 150, 150]
