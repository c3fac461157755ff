"""Bad config values fail before any data is read (segexp/validate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from segexp.run.lifecycle import train
from segexp.run.validate import ConfigError, check_config, check_pipeline

CROP = {"_target_": "albumentations.RandomCrop", "height": 96, "width": 96}
PAD = {"_target_": "albumentations.PadIfNeeded", "min_height": 96, "min_width": 96}


def test_default_config_is_valid(compose_cfg):
    check_config(compose_cfg())
    check_config(compose_cfg(tiny=False))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.num_classes=1", "data.num_classes=1: must be an integer >= 2"),
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
        ("data.num_workers=-1", "data.num_workers=-1: must be an integer >= 0"),
        ("optimizer.lr=-0.001", "optimizer.lr=-0.001: must be a positive finite number"),
        ("optimizer.lr=0", "optimizer.lr=0: must be a positive"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1: must be >= 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        (
            "model.encoder_name=resnet1800",
            "model.encoder_name='resnet1800': unknown encoder (valid: ",
        ),
        (
            "model.encoder_name=tu-nonexistent_net",
            "model.encoder_name='tu-nonexistent_net': unknown",
        ),
        ("model.arch=unetzzz", "model.arch='unetzzz': unknown architecture (valid: "),
        ("model.in_channels=4", "model.in_channels=4: images are read as RGB"),
        ("model.classes=3", "model.classes=3 but data.num_classes=6"),
        ("seed=abc", "seed='abc': must be an integer"),
        ("compile_mode=fastest", "compile_mode='fastest': not a torch.compile mode (valid: "),
        ("channels_last=maybe", "channels_last='maybe': must be true, false or null"),
    ],
)
def test_bad_value_names_key_value_and_range(compose_cfg, override, expected):
    with pytest.raises(ConfigError) as error:
        check_config(compose_cfg([override, "compile=true"]))  # compile_mode counts when on
    assert expected in str(error.value)


def test_speed_switches_are_booleans(compose_cfg):
    """compile=maybe was taken as true (any non-empty string is); channels_last=null is the
    per-device default and passes."""
    with pytest.raises(ConfigError, match=r"compile='maybe': must be true or false"):
        check_config(compose_cfg(["compile=maybe"]))
    check_config(compose_cfg(["channels_last=null", "compile=false", "compile_mode=bogus"]))


def test_every_problem_is_listed_at_once(compose_cfg):
    with pytest.raises(ConfigError) as error:
        check_config(compose_cfg(["data.batch_size=0", "optimizer.lr=-1"]))
    assert "data.batch_size=0" in str(error.value) and "optimizer.lr=-1" in str(error.value)


def test_known_encoders_pass(compose_cfg):
    check_config(compose_cfg(["model.encoder_name=efficientnet-b0"]))
    check_config(compose_cfg(["model=fpn", "model.encoder_name=tu-resnet18"]))


def test_crop_larger_than_images_without_padding(compose_cfg):
    # TINY images are 64x64 (data.generate.image_size=64).
    cfg = compose_cfg()
    with open_dict(cfg):
        cfg.augment.train = [CROP]
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    message = str(error.value)
    assert "augment.train[0] RandomCrop height=96 width=96" in message
    assert "(64x64, after the images)" in message and "valid: height <= 64, width <= 64" in message
    assert "PadIfNeeded(min_height=96, min_width=96)" in message


def test_crop_allowed_by_padding_policy():
    assert check_pipeline([PAD, CROP], "augment.train", (64, 64)) == []
    assert check_pipeline([{**CROP, "pad_if_needed": True}], "augment.train", (64, 64)) == []
    small_pad = {**PAD, "min_height": 80, "min_width": 80}
    (problem,) = check_pipeline([small_pad, CROP], "augment.train", (64, 64))
    assert "(80x80, after augment.train[0] PadIfNeeded)" in problem
    # Unknown image size: only what padding guarantees can be checked.
    assert check_pipeline([CROP], "augment.train", None) == []
    resize = {"_target_": "albumentations.Resize", "height": 128, "width": 128}
    assert check_pipeline([resize, CROP], "augment.train", (64, 64)) == []


def test_train_rejects_bad_config_before_reading_data(compose_cfg, tmp_path):
    cfg = compose_cfg(["data.num_classes=1"])
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path / "never-created")
    with pytest.raises(ConfigError, match="data.num_classes=1"):
        train(cfg)
    assert not Path(cfg.paths.data_dir).exists()  # the dataset was not generated or read
    assert not Path(cfg.paths.output_dir).exists()  # nor the run folder written
