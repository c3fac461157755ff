"""Every model/ option builds from the composed config and handles any input size; FCN follows the paper."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F

from segexp.model.networks import (
    FCN,
    PadToMultiple,
    bilinear_upsample,
    build_model,
    required_multiple,
)
from tests.conftest import CONF

MODELS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))


def forward_backward(net: nn.Module, height: int, width: int) -> torch.Tensor:
    torch.manual_seed(0)
    net.train()
    logits = net(torch.randn(2, 3, height, width))
    logits.mean().backward()
    return logits


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_model_option_trains_on_any_size(compose_cfg, name):
    cfg = compose_cfg([f"model={name}"])
    assert cfg.model.encoder_weights is None  # nothing downloads
    net = PadToMultiple(instantiate(cfg.model))
    num_classes = cfg.data.num_classes
    for height, width in [(64, 64), (65, 97)]:
        net.zero_grad()
        logits = forward_backward(net, height, width)
        assert logits.shape == (2, num_classes, height, width)
        # PSPNet (depth 3) and DPT (timm's classifier head) hold parameters they never use.
        grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        encoder_grads = [p.grad for p in net.net.encoder.parameters() if p.grad is not None]
        assert encoder_grads and encoder_grads[0].abs().sum() > 0  # gradient reaches the stem


@pytest.mark.parametrize("variant", ["32s", "16s"])  # 8s is the config default, covered above
def test_fcn_variants(compose_cfg, variant):
    cfg = compose_cfg(["model=fcn", f"model.variant={variant}"])
    net = PadToMultiple(instantiate(cfg.model))
    logits = forward_backward(net, 65, 97)
    assert logits.shape == (2, cfg.data.num_classes, 65, 97)
    assert len(net.net.skip_scores) == {"32s": 0, "16s": 1}[variant]


def test_fcn_skips_score_the_stride_16_and_8_features():
    net = FCN(encoder_name="resnet18", classes=5, variant="8s")
    channels = net.encoder.out_channels  # resnet18: 3, 64, 64, 128, 256, 512
    assert [s.in_channels for s in net.skip_scores] == [channels[4], channels[3]] == [256, 128]
    assert all(s.kernel_size == (1, 1) and s.out_channels == 5 for s in net.skip_scores)
    # Paper: new score layers start at zero, so FCN-8s starts as FCN-32s ...
    assert all((s.weight == 0).all() and (s.bias == 0).all() for s in net.skip_scores)
    # ... the x2 fusion upsamplings learn, the final one is fixed bilinear by default.
    assert all(up.weight.requires_grad for up in net.skip_upsamples)
    assert not net.final_upsample.weight.requires_grad
    assert net.final_upsample.stride == (8, 8)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    forward_backward(net, 64, 64)
    opt.step()
    assert all(s.weight.abs().sum() > 0 for s in net.skip_scores)  # the skips are trained
    learned = FCN(encoder_name="resnet18", classes=5, variant="32s", learn_final_upsample=True)
    assert learned.final_upsample.weight.requires_grad and learned.final_upsample.stride == (32, 32)


def test_bilinear_upsample_matches_bilinear_interpolation():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 6)
    for factor in (2, 8, 32):
        up = bilinear_upsample(3, factor)(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert up.shape == ref.shape == (1, 3, 5 * factor, 6 * factor)
        inner = (..., slice(factor, -factor), slice(factor, -factor))  # borders see zero padding
        assert torch.allclose(up[inner], ref[inner], atol=1e-5)


def test_fcn_refuses_sizes_it_cannot_round_trip():
    with pytest.raises(ValueError, match="multiples of 32.*PadToMultiple"):
        FCN(classes=2)(torch.randn(1, 3, 40, 64))


@pytest.mark.parametrize(
    "arch,kwargs,multiple",
    [
        ("unet", {}, 32),
        ("deeplabv3", {"encoder_output_stride": 8}, 8),
        ("deeplabv3plus", {"encoder_output_stride": 16}, 16),
        ("pspnet", {"encoder_depth": 3, "upsampling": 8}, 8),
        ("pan", {"encoder_output_stride": 16}, 128),
        ("fcn", {}, 32),
    ],
)
def test_required_multiple_per_model(arch, kwargs, multiple):
    net = build_model(arch, encoder_name="resnet18", classes=3, **kwargs)
    assert required_multiple(net) == multiple
    assert PadToMultiple(net).multiple == multiple


def test_deeplab_output_stride_and_rates_reach_smp(compose_cfg):
    cfg = compose_cfg(
        [
            "model=deeplabv3",
            "model.encoder_output_stride=8",
            "model.decoder_atrous_rates=[12,24,36]",
        ]
    )
    net = instantiate(cfg.model)
    assert net.encoder.output_stride == 8
    dilations = [m.dilation[0] for m in net.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert {12, 24, 36} <= set(dilations)


def test_pad_to_multiple_crops_back_exactly():
    x = torch.randn(2, 3, 65, 97)
    padded = PadToMultiple(nn.Identity(), 32)
    assert torch.equal(padded(x), x)
    with pytest.raises(ValueError, match="multiples of 32"):
        PadToMultiple(build_model("unet", classes=2), 16)


def test_unknown_arch_and_variant_are_clear_errors():
    with pytest.raises(ValueError, match=r"model.arch='unett'.*fcn.*unet"):
        build_model("unett")
    with pytest.raises(ValueError, match=r"model.variant='4s'.*32s, 16s, 8s"):
        build_model("fcn", variant="4s")
    with pytest.raises(ValueError, match=r"model.encoder_name='resnet1'.*tu-"):
        build_model("unet", encoder_name="resnet1")
    with pytest.raises(ValueError, match=r"model.decoder_chanels: arch='unet'.*decoder_channels"):
        build_model("unet", decoder_chanels=[8, 8, 8, 8, 8])  # smp alone would ignore the typo


def test_channels_last_gives_the_same_logits_and_survives_a_checkpoint(compose_cfg, tmp_path):
    """channels_last=true (the GPU speed option): NHWC weights and inputs, same numbers."""
    from omegaconf import OmegaConf

    from segexp.model.module import SegModule
    from segexp.run.checkpoint import load_module

    cfg = compose_cfg(["channels_last=true"])
    assert cfg.channels_last is True
    parts = {
        k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "loss", "optimizer")
    }
    args = dict(net=parts["model"], loss=parts["loss"], optimizer=parts["optimizer"], num_classes=6)
    plain = SegModule(**args).eval()
    nhwc = SegModule(**args, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    conv = next(m for m in nhwc.net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really NHWC, not a 1x1 kernel that is both
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-4)

    path = tmp_path / "nhwc.ckpt"
    torch.save({"state_dict": nhwc.state_dict(), "hyper_parameters": dict(nhwc.hparams)}, path)
    loaded = load_module(path)
    assert loaded.hparams.channels_last is True
    assert loaded.memory_format == torch.channels_last


@pytest.mark.parametrize(
    ("overrides", "cuda", "expected"),
    [
        ([], False, False),  # the default run on a CPU: as before
        (["trainer.accelerator=gpu"], False, True),  # a GPU run (built before the device)
        (["trainer.accelerator=auto"], True, True),  # auto on a machine with CUDA
        (["trainer.accelerator=auto"], False, False),
        (["trainer.accelerator=gpu", "channels_last=false"], False, False),  # said, so kept
        (["channels_last=true"], False, True),
    ],
)
def test_channels_last_null_means_on_for_cuda_runs(
    compose_cfg, monkeypatch, overrides, cuda, expected
):
    from segexp.model.module import build_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = compose_cfg(overrides)
    module = build_module(cfg)
    assert module.hparams.channels_last is expected  # what the checkpoint will carry
    assert (module.memory_format == torch.channels_last) is expected


def test_shallow_resnet_encoder_holds_only_the_stages_it_runs(compose_cfg):
    """encoder_depth=4 (model=unet_small): smp keeps ResNet's layer4 although forward never
    runs it; segexp drops it, so every parameter trains (DDP refuses unused ones)."""
    cfg = compose_cfg(["model=unet_small"])
    assert cfg.model.encoder_depth == 4
    net = instantiate(cfg.model)
    assert not hasattr(net.encoder, "layer4") and hasattr(net.encoder, "layer3")
    forward_backward(net, 64, 64)
    assert all(p.grad is not None for p in net.parameters())
