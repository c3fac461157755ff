"""Batching samples of different sizes: padding to a common, encoder-friendly size."""

from __future__ import annotations

from typing import Any

import torch

# The one sample a batch holds when data.on_bad_sample=skip dropped all of its own: a
# zero image whose mask is all ignore_index, so it counts in neither loss nor metrics
# (and it is large enough for BatchNorm at stride 32).
PLACEHOLDER_SIZE = 64


def pad_collate(
    batch: list[dict[str, Any]], ignore_index: int = 255, multiple: int = 32
) -> dict[str, Any]:
    """Stack samples of different sizes: pad each to the largest height/width in the batch,
    rounded up to ``multiple`` (encoders downsample by 32), at the bottom/right.

    Padded image pixels are 0 (the mean colour after normalisation); padded mask pixels
    are ``ignore_index``, so they count in neither loss nor metrics; ``batch["size"]`` keeps
    each sample's (height, width) before padding. Samples the dataset
    skipped (``{"skipped": message}``, see ``SegDataset``) are dropped and their messages
    travel in ``batch["skipped"]``; a batch left with nothing holds one all-ignore placeholder.
    """
    skipped = [sample["skipped"] for sample in batch if "skipped" in sample]
    if skipped:
        batch = [sample for sample in batch if "skipped" not in sample]
        if not batch:
            size = max(PLACEHOLDER_SIZE, multiple)
            batch = [
                {
                    "image": torch.zeros(3, size, size),
                    "mask": torch.full((size, size), ignore_index, dtype=torch.long),
                    "name": "",
                }
            ]
    height = max(sample["image"].shape[-2] for sample in batch)
    width = max(sample["image"].shape[-1] for sample in batch)
    if multiple > 1:
        height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    images = batch[0]["image"].new_zeros((len(batch), batch[0]["image"].shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.long)
    for i, sample in enumerate(batch):
        h, w = sample["mask"].shape[-2:]
        images[i, :, :h, :w] = sample["image"]
        masks[i, :h, :w] = sample["mask"]
    out = {
        "image": images,
        "mask": masks,
        "name": [sample["name"] for sample in batch],
        # Where each image came from and its size before padding (the evaluation analysis).
        "path": [sample.get("path", sample["name"]) for sample in batch],
        "size": [tuple(sample["mask"].shape[-2:]) for sample in batch],
    }
    if skipped:
        out["skipped"] = skipped
    return out
