"""Offline encoder weights (segexp.model.encoder_weights): the weights directory first, then
smp / timm's caches, and one clear error when neither has them.

Nothing here downloads: encoder weights are files the tests write themselves in the
weights directory, and the missing-weights path runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segexp.errors import UserError
from segexp.model import encoder_weights
from segexp.model.networks import build_model

SMALL = {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}


def tensors_equal(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty weights directory, and no download may be attempted."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(encoder_weights.WEIGHTS_ENV, str(tmp_path / "weights"))
    return tmp_path / "weights"


def save_encoder(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A freshly built resnet18 encoder's state dict, as the fetch command saves it."""
    from segexp.model.networks import build_network

    torch.manual_seed(seed)
    state = build_network("unet", "resnet18", None, 3, classes=2).encoder.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return state


def test_encoder_weights_come_from_the_weights_directory(offline):
    assert (
        encoder_weights.weights_file("resnet18", "imagenet")
        == offline / "resnet18.imagenet.safetensors"
    )
    state = save_encoder(offline / "resnet18.imagenet.safetensors")
    for arch, kwargs in [("unet", SMALL), ("fcn", {}), ("deeplabv3plus", {})]:
        net = build_model(arch, "resnet18", "imagenet", classes=3, **kwargs)
        assert tensors_equal(net.encoder.state_dict(), state), arch
    gray = build_model("unet", "resnet18", "imagenet", in_channels=1, classes=3)
    assert torch.allclose(gray.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_missing_encoder_weights_offline_is_one_clear_error(offline):
    with pytest.raises(UserError) as caught:
        build_model("unet", "resnet18", "imagenet", classes=3)
    message = str(caught.value)
    assert str(offline / "resnet18.imagenet.safetensors") in message
    assert "smp-hub/resnet18.imagenet" in message  # the Hugging Face cache entry looked for
    assert "python -m segexp.weights fetch model=unet model.encoder_name=resnet18" in message
    with pytest.raises(UserError, match="available: imagenet, ssl, swsl"):
        build_model("unet", "resnet18", "imagenet21k", classes=3)


def test_fetch_then_offline_build(offline, monkeypatch):
    """The fetch command's file is what the offline build loads (the download is stood in
    for by a seeded build: the test must not download)."""
    from segexp.cli import weights as cli
    from segexp.model import networks

    real = networks.build_network

    def downloaded(arch, encoder_name, encoder_weights, in_channels, **kwargs):
        assert encoder_weights == "imagenet" and in_channels == 3
        torch.manual_seed(7)
        return real(arch, encoder_name, None, in_channels, **kwargs)

    monkeypatch.setattr(networks, "build_network", downloaded)
    saved = cli.fetch(["model=unet", "model.encoder_name=resnet18,resnet34", "model.in_channels=4"])
    assert saved == [
        offline / "resnet18.imagenet.safetensors",
        offline / "resnet34.imagenet.safetensors",
    ]
    monkeypatch.setattr(networks, "build_network", real)
    expected = downloaded("unet", "resnet18", "imagenet", 3, classes=2).encoder.state_dict()
    net = build_model("unet", "resnet18", "imagenet", classes=5)
    assert tensors_equal(net.encoder.state_dict(), expected)


def test_checkpoints_rebuild_without_looking_up_encoder_weights(offline):
    with encoder_weights.skip_encoder_weights():
        build_model("unet", "resnet34", "imagenet", classes=3)  # nothing cached, no error
    with pytest.raises(UserError):
        build_model("unet", "resnet34", "imagenet", classes=3)
