"""Networks: every segmentation-models-pytorch architecture, by name, from config.

``smp.create_model`` is the architecture registry; this module only adds what
smp lacks and keeps the config one hop from the code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_model(
    arch: str,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """An smp model: ``arch`` is any name ``smp.create_model`` accepts (unet, fpn, deeplabv3plus, ...).

    ``encoder_weights`` defaults to None so nothing downloads; "imagenet" is opt-in.
    Extra keyword arguments go to the architecture (e.g. ``decoder_channels``).
    """
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except KeyError as error:
        names = sorted(smp.encoders.get_encoder_names()) if "encoder" in str(error).lower() else []
        hint = f" Valid encoders include: {', '.join(names[:20])}, ... or any 'tu-<timm name>'." if names else ""
        raise ValueError(f"model: cannot build arch={arch!r} encoder_name={encoder_name!r}: {error}.{hint}") from error


class PadToMultiple(nn.Module):
    """Pad the input to a multiple of ``multiple`` and crop the output back.

    Encoders downsample by 32 (or ``2**depth``); an image whose sides are not
    multiples of that cannot round-trip through the decoder. Reflect padding
    keeps border statistics close to the image's own.
    """

    def __init__(self, net: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = (-height) % self.multiple
        pad_w = (-width) % self.multiple
        if pad_h == 0 and pad_w == 0:
            return self.net(x)
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return self.net(x)[..., :height, :width]
