"""Networks: every segmentation-models-pytorch architecture by name, plus FCN, from config.

``smp.create_model`` is the architecture registry; this module only adds what
smp lacks (FCN, padding any input size) and keeps the config one hop from the code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from segexp.errors import UserError
from segexp.model.encoder_weights import build_with_encoder_weights

FCN_STRIDES = {"32s": 32, "16s": 16, "8s": 8}
# Architectures that are not in smp's registry (smp.MODEL_ARCHITECTURES_MAPPING).
EXTRA_ARCHS = ("fcn",)
# How many times the encoder's output stride an architecture needs its input sides to be
# a multiple of: DPT's decoder adds one stride-2 stage above the ViT's patch grid; PAN's
# feature pyramid attention halves the deepest map three more times. Declared per
# architecture name at build time (``net.stride_factor``), read by ``required_multiple``.
STRIDE_FACTORS = {"dpt": 2, "pan": 8}


def build_model(
    arch: str,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """A segmentation network: ``arch`` is ``fcn`` or any name ``smp.create_model`` accepts.

    ``encoder_weights`` defaults to None so nothing downloads; "imagenet" (or any name smp /
    timm offer) is opt-in, read from the weights directory first, then from smp / timm's
    caches or a download (``segexp.model.encoder_weights``, ``python -m segexp.weights fetch``).
    Extra keyword arguments go to the architecture (e.g. ``decoder_channels``,
    ``encoder_output_stride``, FCN's ``variant``).
    """
    if encoder_weights is not None:
        return build_with_encoder_weights(
            build_network,
            arch,
            encoder_name,
            encoder_weights,
            in_channels,
            classes=classes,
            **kwargs,
        )
    return build_network(arch, encoder_name, None, in_channels, classes=classes, **kwargs)


def build_network(
    arch: str,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """``build_model`` with ``encoder_weights`` handed to smp / timm as they are."""
    import segmentation_models_pytorch as smp

    try:
        if arch.lower() == "fcn":
            return FCN(
                encoder_name=encoder_name,
                encoder_weights=encoder_weights,
                in_channels=in_channels,
                classes=classes,
                **kwargs,
            )
        _check_arch_kwargs(smp, arch, encoder_name, kwargs)
        net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
        drop_unused_stages(net.encoder)
        net.stride_factor = STRIDE_FACTORS.get(arch.lower(), 1)
        return net
    except KeyError as error:
        if "architecture" in str(error).lower():
            archs = sorted([*smp.MODEL_ARCHITECTURES_MAPPING, *EXTRA_ARCHS])
            raise UserError(
                f"model.arch={arch!r} is not an architecture; valid: {', '.join(archs)}. "
                "Pick one with model=NAME (conf/model/) or set model.arch."
            ) from error
        # smp's message already lists its encoders; add the timm route.
        raise UserError(
            f"model.encoder_name={encoder_name!r} cannot be built for arch={arch!r}: {error}. "
            "Set model.encoder_name to one of those or to 'tu-<any timm model name>'."
        ) from error
    except TypeError as error:
        # An unknown keyword (e.g. a key meant for another arch) surfaces here.
        raise UserError(
            f"model: arch={arch!r} does not take one of the given arguments "
            f"{sorted(kwargs)}: {error}. Remove the key from the model config."
        ) from error


def drop_unused_stages(encoder: nn.Module) -> None:
    """Delete the ResNet stages an ``encoder_depth`` < 5 never runs.

    smp builds all four ResNet layers and skips the deep ones in forward: their weights
    would still fill checkpoints and the optimizer, and DDP stops on parameters that get
    no gradient. Pretrained weights are already loaded when this runs.
    """
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

    if not isinstance(encoder, ResNetEncoder):
        return
    depth = int(getattr(encoder, "_depth", 5))
    for index in range(max(depth, 1), 5):  # depth d runs layer1 .. layer{d-1}
        if hasattr(encoder, f"layer{index}"):
            delattr(encoder, f"layer{index}")


def _check_arch_kwargs(smp: Any, arch: str, encoder_name: str, kwargs: dict[str, Any]) -> None:
    """smp drops unknown keywords silently unless the encoder is a timm one: refuse them here."""
    import inspect

    model_class = smp.MODEL_ARCHITECTURES_MAPPING.get(arch.lower())
    if model_class is None or encoder_name.startswith("tu-"):
        return  # unknown arch: smp's error lists them; tu-: extras go to timm, which checks
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(
            f"model.{unknown[0]}: arch={arch!r} has no argument(s) {unknown}; it accepts "
            f"{sorted(accepted)}. Fix the key or remove it from the model config. To switch "
            f"architecture, choose a whole model config (model={arch.lower()}, conf/model/): "
            "model.arch=... keeps the keys of the current one (e.g. unet_small's decoder_channels)."
        )


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(channels, channels, k, k) transposed-conv weights that upsample each channel bilinearly.

    As in Long et al.'s ``surgery.interp``: a bilinear filter on the diagonal,
    zero across channels, so training may learn to mix classes later.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    return weight


def bilinear_upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A transposed conv that multiplies H and W exactly by ``factor``, initialised to bilinear."""
    layer = nn.ConvTranspose2d(
        channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return layer


class FCN(nn.Module):
    """Fully Convolutional Network (Long, Shelhamer, Darrell, CVPR 2015) on an smp encoder.

    ``32s`` scores the stride-32 features with a 1x1 conv and upsamples x32;
    ``16s`` upsamples that score x2 (learned, bilinear-initialised transposed conv),
    adds a 1x1 score of the stride-16 features and upsamples x16; ``8s`` does it
    once more with the stride-8 features and upsamples x8. As in the paper, the
    skip score layers start at zero (so a new net starts as the coarser one) and
    the final upsampling is fixed bilinear unless ``learn_final_upsample``.

    Args:
        encoder_name: the smp encoder (depth 5, stride 32).
        encoder_weights: its pretrained weights, or None.
        in_channels: image channels.
        classes: number of output channels.
        variant: ``32s``, ``16s`` or ``8s``.
        head_channels: width of the conv3x3-BN-ReLU-dropout block on the stride-32
            features (the paper's fc6/fc7 on VGG); 0 scores the features directly.
        dropout: dropout in that block.
        learn_final_upsample: also train the last (x8/x16/x32) upsampling.
    """

    pad_multiple = 32  # the stride-32 map must upsample back to exactly the input size

    def __init__(
        self,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        classes: int = 2,
        variant: str = "8s",
        head_channels: int = 512,
        dropout: float = 0.1,
        learn_final_upsample: bool = False,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        if variant not in FCN_STRIDES:
            raise UserError(
                f"model.variant={variant!r}: valid options are {', '.join(FCN_STRIDES)} "
                "(FCN-32s, -16s, -8s; 8s keeps the finest detail)."
            )
        self.variant = variant
        self.encoder = get_encoder(
            encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights
        )
        channels = self.encoder.out_channels  # one per stride: 1, 2, 4, 8, 16, 32
        if head_channels:
            self.head = nn.Sequential(
                nn.Conv2d(channels[-1], head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            )
            score_in = head_channels
        else:
            self.head = nn.Identity()
            score_in = channels[-1]
        self.score = nn.Conv2d(score_in, classes, 1)
        # Skips, coarse to fine: stride 16 (pool4 in the paper), then stride 8 (pool3).
        num_skips = {"32s": 0, "16s": 1, "8s": 2}[variant]
        self.skip_scores = nn.ModuleList()
        self.skip_upsamples = nn.ModuleList()
        for level in range(num_skips):
            score = nn.Conv2d(channels[-2 - level], classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.skip_scores.append(score)
            self.skip_upsamples.append(bilinear_upsample(classes, 2))
        self.final_upsample = bilinear_upsample(classes, FCN_STRIDES[variant])
        self.final_upsample.weight.requires_grad_(learn_final_upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.pad_multiple or width % self.pad_multiple:
            raise ValueError(
                f"FCN input is {height}x{width}; height and width must be multiples of "
                f"{self.pad_multiple}. Wrap the net in segexp.model.networks.PadToMultiple."
            )
        features = self.encoder(x)  # strides 1, 2, 4, 8, 16, 32
        score = self.score(self.head(features[-1]))  # (B, classes, H/32, W/32)
        for level, (skip_score, upsample) in enumerate(zip(self.skip_scores, self.skip_upsamples)):
            score = upsample(score) + skip_score(features[-2 - level])  # stride halves
        return self.final_upsample(score)  # (B, classes, H, W)


def required_multiple(net: nn.Module) -> int:
    """The multiple that the input's height and width must have for ``net`` to round-trip.

    Most smp models need the encoder's output stride (32; 16 or 8 for dilated
    DeepLab encoders; 8 for PSPNet's depth-3 encoder). DPT's decoder adds one
    stride-2 stage above the ViT's patch grid, so it needs twice the patch size.
    PAN's feature pyramid attention halves the deepest map three more times and
    adds the upsampled maps back, so it needs 8x the output stride.
    """
    explicit = getattr(net, "pad_multiple", None)
    if explicit:
        return int(explicit)
    stride = getattr(getattr(net, "encoder", None), "output_stride", None)
    if stride is None:
        return 32  # an unknown net: 32 suits every 5-stage encoder
    return int(getattr(net, "stride_factor", 1)) * int(stride)


class PadToMultiple(nn.Module):
    """Pad the input to a multiple of the net's stride and crop the output back.

    An image whose sides are not multiples of the encoder's stride cannot
    round-trip through the decoder; padding lets any size through. Reflect
    padding keeps border statistics close to the image's own.

    Args:
        net: the network.
        multiple: pad to this multiple; None infers it (``required_multiple``).
        traceable: for export (``segexp.infer.export``): always pad, by index gathering
            that picks reflect or replicate (as above) with tensor ops, so there is no
            Python branch on the input size for a tracer to freeze and the exported graph
            keeps dynamic sizes, small inputs included.
    """

    def __init__(
        self, net: nn.Module, multiple: int | None = None, traceable: bool = False
    ) -> None:
        super().__init__()
        self.net = net
        self.traceable = bool(traceable)
        needed = required_multiple(net)
        if multiple is None:
            multiple = needed
        elif multiple % needed:
            raise UserError(
                f"pad_multiple={multiple} but {type(net).__name__} needs inputs whose sides are "
                f"multiples of {needed}; use {math.lcm(multiple, needed)} or leave it null."
            )
        self.multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        # (m - h % m) % m rather than (-h) % m: the same pad, without a negative operand in
        # an exported graph's shape arithmetic.
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        if self.traceable:
            zero = torch.zeros((), dtype=torch.long, device=x.device)  # sizes as tensors
            small = ((zero + pad_h) >= height) | ((zero + pad_w) >= width)
            x = x.index_select(-2, _pad_index(height, pad_h, small, x.device))
            x = x.index_select(-1, _pad_index(width, pad_w, small, x.device))
            return self.net(x)[..., :height, :width]
        if pad_h == 0 and pad_w == 0:
            return self.net(x)
        small = pad_h >= height or pad_w >= width
        mode = "replicate" if small else "reflect"
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return self.net(x)[..., :height, :width]


def _pad_index(size, pad, small: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices that pad an axis of ``size`` by ``pad`` at its end, as F.pad's reflect (or
    replicate where ``small``) does; tensor ops only, so a traced graph keeps sizes dynamic."""
    index = torch.arange(size + pad, device=device)
    inside = index < size
    reflect = torch.where(inside, index, 2 * (size - 1) - index)
    replicate = torch.where(inside, index, torch.zeros_like(index) + (size - 1))
    return torch.where(small, replicate, reflect)
