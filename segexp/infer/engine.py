"""Inference modes: whole image, sliding window, test-time augmentation, post-processing.

``Inference`` is what the ``inference/`` config group instantiates; evaluate.py
and predict.py call it on a batch of normalised images and get per-class
probabilities back. The modes combine: a sliding window runs inside every
scale and flip of the test-time augmentation.

- whole: the network sees the full image (padded to its stride multiple by the model).
- slide: windows of ``crop_size`` every ``stride`` pixels; the logits of
  overlapping windows are averaged (images larger than the training crops).
- TTA: ``scales`` resizes the image (bilinear), ``hflip`` adds the mirrored
  image; softmax probabilities of all variants are averaged at the input size.
- postprocess: an optional callable ``(image uint8 (H, W, 3), probs float32 (C, H, W))
  -> probs`` (e.g. a dense CRF, ``postprocess=crf``) applied per image last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segexp.data.viz import denormalize
from segexp.errors import UserError

Postprocess = Callable[[np.ndarray, np.ndarray], np.ndarray]
MODES = ("whole", "slide")


def _pair(value: int | Sequence[int] | None, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise UserError(f"inference.{key}={value}: give a positive int or [height, width].")
    return pair


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride`` pixels, the last one flush with the end."""
    if size <= crop:
        return [0]
    count = (size - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def slide_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, H, W) logits averaged over overlapping windows."""
    height, width = images.shape[-2:]
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    total = None
    count = images.new_zeros((1, 1, height, width))
    for top in window_starts(height, crop_h, stride_h):
        for left in window_starts(width, crop_w, stride_w):
            bottom, right = min(top + crop_h, height), min(left + crop_w, width)
            logits = model(images[..., top:bottom, left:right])
            if total is None:
                total = images.new_zeros((images.shape[0], logits.shape[1], height, width))
            total[..., top:bottom, left:right] += logits.to(total.dtype)
            count[..., top:bottom, left:right] += 1
    return total / count


class Inference:
    """Whole / sliding-window inference with optional flip and multi-scale TTA.

    Args:
        mode: ``whole`` or ``slide``.
        crop_size: window size for ``slide`` (int or [h, w]), in pixels of the (scaled) image.
        stride: window step for ``slide``; default: two thirds of ``crop_size``.
        hflip: also run the horizontally flipped image and average.
        scales: resize factors to run at (1.0 = input size); probabilities are averaged.
        postprocess: optional ``f(image uint8 (H, W, 3), probs (C, H, W)) -> probs``.
    """

    def __init__(
        self,
        mode: str = "whole",
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        hflip: bool = False,
        scales: Sequence[float] = (1.0,),
        postprocess: Postprocess | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"inference.mode={mode!r}: valid modes are {', '.join(MODES)}.")
        self.mode = mode
        self.crop_size = _pair(crop_size, "crop_size")
        if mode == "slide" and self.crop_size is None:
            raise UserError(
                "inference.mode=slide needs inference.crop_size (e.g. the training crop size, "
                "inference.crop_size=512)."
            )
        default_stride = (
            None if self.crop_size is None else [max(1, c * 2 // 3) for c in self.crop_size]
        )
        self.stride = _pair(stride if stride is not None else default_stride, "stride")
        self.hflip = bool(hflip)
        self.scales = [float(s) for s in scales] or [1.0]
        if min(self.scales) <= 0:
            raise UserError(f"inference.scales={list(scales)}: every scale must be > 0.")
        self.postprocess = postprocess

    def logits(self, model: Callable, images: torch.Tensor) -> torch.Tensor:
        """One forward pass in the configured mode (no TTA): (B, 3, H, W) -> (B, C, H, W)."""
        if self.mode == "slide":
            return slide_logits(model, images, self.crop_size, self.stride)
        return model(images)

    @torch.no_grad()
    def probs(
        self,
        model: Callable,
        images: torch.Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H, W) float32 class probabilities.

        ``mean``/``std`` (in [0, 1] units, the checkpoint's) are needed only by a
        post-processing step, which sees the un-normalised uint8 image.
        """
        height, width = images.shape[-2:]
        total = None
        for scale in self.scales:
            scaled = images
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            variants = [(scaled, False)] + ([(scaled.flip(-1), True)] if self.hflip else [])
            for variant, flipped in variants:
                logits = self.logits(model, variant).float()
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (height, width):
                    logits = F.interpolate(
                        logits, size=(height, width), mode="bilinear", align_corners=False
                    )
                probs = logits.softmax(dim=1)
                total = probs if total is None else total + probs
        probs = total / (len(self.scales) * (2 if self.hflip else 1))
        if self.postprocess is not None:
            probs = apply_postprocess(self.postprocess, images, probs, mean, std)
        return probs

    def log_probs(self, model: Callable, images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
        """Log-probabilities: a drop-in for logits (softmax/argmax/cross-entropy agree)."""
        return self.probs(model, images, mean, std).clamp_min(1e-12).log()

    def __repr__(self) -> str:
        return (
            f"Inference(mode={self.mode}, crop_size={self.crop_size}, stride={self.stride}, "
            f"hflip={self.hflip}, scales={self.scales}, postprocess={self.postprocess!r})"
        )


def apply_postprocess(
    postprocess: Postprocess,
    images: torch.Tensor,
    probs: torch.Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """Run ``postprocess(image uint8 (H, W, 3), probs float32 (C, H, W))`` on each image."""
    if mean is None or std is None:
        raise ValueError(
            "a postprocess step needs the image's mean/std to un-normalise it; pass the "
            "checkpoint's (module.hparams.mean / std)"
        )
    pixels = denormalize(images, mean, std)
    probs_np = probs.float().cpu().numpy()
    out = []
    for image, prob in zip(pixels, probs_np):
        result = np.asarray(postprocess(np.ascontiguousarray(image), np.ascontiguousarray(prob)))
        if result.shape != prob.shape:
            raise ValueError(
                f"postprocess {postprocess!r} returned shape {result.shape}, expected {prob.shape} "
                "(C, H, W) probabilities"
            )
        out.append(result.astype(np.float32, copy=False))
    return torch.from_numpy(np.stack(out)).to(probs.device)
