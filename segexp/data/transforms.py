"""Joint image+mask augmentation pipelines (albumentations).

The ``augment/`` config group lists albumentations transforms by ``_target_``;
Hydra instantiates them and ``build_transform`` appends normalisation and the
conversion to tensors. Albumentations applies every geometric transform to the
image and the mask together (nearest-neighbour for the mask), so they stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    transforms: Sequence[Any] = (),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
):
    """Compose ``transforms`` + Normalize(mean, std) + ToTensorV2 into one pipeline."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    steps = [*transforms, A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps, seed=seed)
