"""Checkpoints: clear errors for mismatches, weights_only loading, the trust model (segexp/checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from segexp.model.module import SegModule, build_module
from segexp.run.checkpoint import CheckpointError, check_compatible, load_module, read_checkpoint
from segexp.run.lifecycle import train


def save(module: SegModule, path: Path, **extra) -> Path:
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), **extra}, path
    )
    return path


@pytest.fixture
def saved(compose_cfg, tmp_path) -> Path:
    """A checkpoint of the default model (U-Net, resnet18, 6 classes)."""
    return save(build_module(compose_cfg()), tmp_path / "unet6.ckpt")


def test_matching_checkpoint_passes(compose_cfg, saved):
    check_compatible(saved, build_module(compose_cfg()))


def test_other_num_classes_is_a_clear_error(compose_cfg, saved):
    cfg = compose_cfg(["data.num_classes=3", "data.class_names=[a,b,c]"])
    with pytest.raises(CheckpointError) as error:
        check_compatible(saved, build_module(cfg))
    message = str(error.value)
    assert f"ckpt_path={saved} does not fit this config" in message
    assert "data.num_classes: checkpoint 6, config 3" in message
    assert "differ in shape, e.g. net.net.segmentation_head.0.weight (6," in message
    assert "set data.num_classes=6 to match it" in message


def test_other_architecture_is_a_clear_error(compose_cfg, saved):
    with pytest.raises(CheckpointError) as error:
        check_compatible(saved, build_module(compose_cfg(["model=fpn"])))
    message = str(error.value)
    assert "model.arch: checkpoint 'unet', config 'fpn'" in message
    assert "missing from the checkpoint" in message


def test_train_refuses_mismatched_checkpoint_before_reading_data(compose_cfg, saved, tmp_path):
    cfg = compose_cfg(["model.encoder_name=resnet34", f"ckpt_path={saved}"])
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path / "never-created")
    with pytest.raises(
        CheckpointError, match="model.encoder_name: checkpoint 'resnet18', config 'resnet34'"
    ):
        train(cfg)
    assert not Path(cfg.paths.data_dir).exists()


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it would create ``path`` (it must never run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (str(self.path),))


def test_pickled_code_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(path)
    assert not marker.exists()


def test_untrusted_target_in_checkpoint_config_is_refused(compose_cfg, saved, tmp_path):
    marker = tmp_path / "code-ran"
    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["hyper_parameters"]["loss"] = {"_target_": "os.makedirs", "name": str(marker)}
    torch.save(checkpoint, saved)
    with pytest.raises(CheckpointError) as error:
        load_module(saved)
    assert "hyper_parameters.loss._target_='os.makedirs'" in str(
        error.value
    ) and "untrusted" in str(error.value)
    assert not marker.exists()

    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["hyper_parameters"]["loss"] = {"_target_": "segexp.model.losses.CrossEntropyLoss"}
    checkpoint["run_config"] = {"data": {"_target_": "subprocess.run", "args": ["true"]}}
    torch.save(checkpoint, saved)
    with pytest.raises(CheckpointError, match=r"run_config\.data\._target_='subprocess\.run'"):
        load_module(saved)


def test_own_checkpoint_loads_back(saved):
    module = load_module(saved)
    assert module.hparams.num_classes == 6
