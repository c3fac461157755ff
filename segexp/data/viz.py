"""Pictures of images and masks: the class palette, mask overlays, un-normalising a batch.

One copy of each, in the data layer, so that the dataset browser (``segexp.data.browse``),
predictions (``predict.py``, ``segexp.infer``) and the W&B image logger
(``segexp.track.callbacks``) draw classes in the same colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_COLOUR = (255, 255, 255)


def palette(num_classes: int = 256) -> np.ndarray:
    """Distinct RGB colours per class, the PASCAL VOC bit pattern (class 0 black): (N, 3) uint8."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((label >> channel) & 1) << (7 - bit)
            label >>= 3
        colours[index] = rgb
    return colours


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colours: np.ndarray | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Blend the class colours over the image: (H, W, 3) uint8.

    ``colours`` is one RGB row per class (default: ``palette()``, 256 colours);
    ``ignore_index`` pixels are painted white, so unlabelled areas stand out; a label
    without a colour (a browsed mask with labels out of range) takes the nearest one.
    """
    if colours is None:
        colours = palette()
    labels = np.asarray(mask).astype(np.int64)
    ignored = labels == ignore_index if ignore_index is not None else None
    if ignored is not None:
        labels = np.where(ignored, 0, labels)
    tint = colours[np.clip(labels, 0, len(colours) - 1)].astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * tint
    out = np.clip(blended.round(), 0, 255).astype(np.uint8)
    if ignored is not None:
        out[ignored] = IGNORE_COLOUR
    return out


# The error map: right pixels show the image in light grey, wrong ones red, ignored white.
ERROR_COLOURS = {"correct": (200, 200, 200), "wrong": (230, 0, 0)}


def error_map(
    image: np.ndarray, mask: np.ndarray, prediction: np.ndarray, ignore_index: int | None
) -> np.ndarray:
    """Where the prediction is right (the image, light grey) or wrong (red); ``ignore_index``
    pixels white: (H, W, 3) uint8."""
    mask = np.asarray(mask)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    out = np.repeat(0.4 * grey + 0.6 * 255, 3, axis=2)  # light, so that red stands out
    wrong = np.asarray(prediction) != mask
    out[wrong] = 0.2 * out[wrong] + 0.8 * np.array(ERROR_COLOURS["wrong"], np.float32)
    if ignore_index is not None:
        out[mask == ignore_index] = IGNORE_COLOUR
    return out.round().astype(np.uint8)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) normalised float -> (B, H, W, 3) uint8 RGB, undoing ``Normalize(mean, std)``.

    ``mean``/``std`` are in [0, 1] units (the pipeline scales pixels by 1/255 first).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    pixels = (images.float() * std_t + mean_t) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
