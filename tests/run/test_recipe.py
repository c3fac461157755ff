"""recipe=auto: the choices for two kinds of dataset, user keys kept, and an exact reproduction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segexp.data.stats import DatasetStats
from segexp.run.recipe import (
    RecipeError,
    apply_choices,
    apply_recipe,
    choose,
    keep_user_keys,
)
from tests.conftest import TINY, run_script
from tests.fixtures_data import make_folder

SMALL_SCENES = DatasetStats(  # the embedded shapes data: 64 px, a background and 5 objects
    images=400,
    scanned=400,
    height=64,
    width=64,
    class_fraction=[0.71, 0.07, 0.06, 0.05, 0.03, 0.08],
    image_fraction=[1.0, 0.5, 0.5, 0.5, 0.5, 0.5],
)
LARGE_RARE = DatasetStats(  # large images, a class under half a percent of the pixels
    images=1200,
    scanned=500,
    height=384,
    width=512,
    class_fraction=[0.80, 0.15, 0.047, 0.003],
    image_fraction=[1.0, 0.9, 0.5, 0.05],
)


def values(choices) -> dict:
    return {c.key: c.value for c in choices}


def test_small_images_train_whole_with_the_small_network():
    chosen = values(choose(SMALL_SCENES, budget_s=None, device="cpu"))
    assert chosen == {
        "augment": "light",
        "data.batch_size": 4,
        "model": "unet_small",
        "loss": "ce_dice",  # 3 % of the pixels: rare
        "trainer.max_epochs": 28,  # about 2800 steps of 100 a epoch
    }
    # With a budget the budget sets the steps; balanced classes get plain cross-entropy.
    balanced = DatasetStats(**{**vars(SMALL_SCENES), "class_fraction": [0.5, 0.25, 0.25]})
    chosen = values(choose(balanced, budget_s=120, device="cpu"))
    assert chosen["loss"] == "ce" and "trainer.max_epochs" not in chosen


def test_large_images_with_a_rare_class_crop_and_weight_it():
    short = values(choose(LARGE_RARE, budget_s=300, device="cpu"))
    assert short == {
        "augment": "crop",  # 1200 images, 5 minutes: no time for strong distortions
        "augment.crop_size": 128,  # a short CPU budget: small crops
        "augment.val_max_size": 512,  # validated at the images' own size
        "data.batch_size": 4,
        "model": "unet_small",  # a short CPU budget
        "loss": "ce_dice",
        "loss.losses.ce.weight": "auto",  # 0.3 %: very rare
    }
    long = values(choose(LARGE_RARE, budget_s=3 * 3600, device="cpu"))
    assert long["augment.crop_size"] == 256 and long["model"] == "unet"
    assert "loss.losses.ce.weight" not in long  # hours of steps: Dice alone finds the class
    gpu = values(choose(LARGE_RARE, budget_s=None, device="gpu"))
    assert gpu["augment"] == "light"  # 512 px fit a GPU's largest crop: whole images
    assert gpu["data.batch_size"] == 11 and gpu["model"] == "unet"
    assert gpu["trainer.max_epochs"] == round(20000 / math.ceil(1200 / 11))
    wider = DatasetStats(**{**vars(LARGE_RARE), "height": 768, "width": 1024})
    assert values(choose(wider, budget_s=None, device="gpu"))["augment.crop_size"] == 512
    few = DatasetStats(**{**vars(LARGE_RARE), "images": 80})
    assert values(choose(few, budget_s=None, device="cpu"))["augment"] == "strong"


def test_mid_size_images_crop_only_in_a_short_cpu_budget():
    """256x192 px scenes with a very rare class (benchmark figure 9(b)'s "signs"): in a short
    CPU budget small crops, the small network and class weights buy steps and recall; at
    10 minutes whole images and plain ce_dice, still the small network."""
    signs = DatasetStats(
        images=300,
        scanned=300,
        height=192,
        width=256,
        class_fraction=[0.53, 0.37, 0.099, 0.00064],
        image_fraction=[1.0, 1.0, 1.0, 0.41],
    )
    short = values(choose(signs, budget_s=180, device="cpu"))
    assert short["augment"] == "crop" and short["augment.crop_size"] == 128
    assert short["model"] == "unet_small" and short["loss.losses.ce.weight"] == "auto"
    ten = values(choose(signs, budget_s=600, device="cpu"))
    assert ten == {
        "augment": "light",
        "data.batch_size": 4,
        "model": "unet_small",
        "loss": "ce_dice",
    }
    assert values(choose(signs, budget_s=2 * 3600, device="cpu"))["model"] == "unet"


def test_keys_set_on_the_command_line_are_kept():
    choices = choose(LARGE_RARE, budget_s=300, device="cpu")
    applied, kept = keep_user_keys(choices, {"augment.crop_size", "data.batch_size", "data"})
    # augment.crop_size fixes the augment group (the crop keys belong to it); a data= group
    # choice leaves the batch size free, data.batch_size does not.
    assert {c.key for c in kept} == {
        "augment",
        "augment.crop_size",
        "augment.val_max_size",
        "data.batch_size",
    }
    assert {c.key for c in applied} == {"model", "loss", "loss.losses.ce.weight"}
    applied, kept = keep_user_keys(choices, {"loss"})
    assert {c.key for c in kept} == {"loss", "loss.losses.ce.weight"}


def test_choices_replace_groups_and_values(compose_cfg):
    cfg = compose_cfg(["model=unet", "loss=ce"])
    apply_choices(cfg, choose(LARGE_RARE, budget_s=300, device="cpu"))
    assert cfg.recipe == "auto-applied"
    assert cfg.model.encoder_depth == 4  # unet_small, merged over unet
    assert cfg.model.classes == cfg.data.num_classes  # its interpolation still resolves
    assert cfg.augment.crop_size == 128 and cfg.augment.train[2].height == 128
    assert cfg.loss.losses.ce.weight == "auto" and "dice" in cfg.loss.losses
    assert cfg.data.train_transforms[2].width == 128  # the data group follows augment


def test_apply_recipe_reads_the_data_and_refuses_unknown_recipes(compose_cfg, tmp_path):
    cfg = compose_cfg(["recipe=auto", "trainer.max_epochs=1"])
    applied = apply_recipe(cfg, None, user_keys={"trainer.max_epochs"})
    assert cfg.recipe == "auto-applied" and cfg.trainer.max_epochs == 1
    assert values(applied)["model"] == "unet_small"  # 64 px shapes
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["recipe"]["stats"]["height"] == 64 and info["recipe"]["stats"]["images"] == 8
    cached = list((Path(cfg.paths.data_dir) / "recipe_stats").glob("stats-*.json"))
    assert cached  # the next run reads the statistics from here
    assert apply_recipe(cfg) is None  # applied once: a reproduction does not choose again
    cfg.recipe = "fast"
    with pytest.raises(RecipeError, match="recipe='fast'.*'auto'"):
        apply_recipe(cfg)


@pytest.mark.slow
def test_reproducing_an_auto_recipe_run_gives_identical_metrics(tmp_path):
    root = tmp_path / "folder"
    make_folder(root, {"train": 6, "val": 3, "test": 3}, num_classes=3)
    common = [arg for arg in TINY if not arg.startswith(("data.generate", "data.batch_size"))]
    first = tmp_path / "first"
    result = run_script(
        "train.py",
        *common,
        "data=folder",
        f"data.root={root}",
        f"paths.data_dir={tmp_path / 'cache'}",
        "recipe=auto",
        f"hydra.run.dir={first}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe=auto: 6 train images of 64x48 px" in result.stdout
    assert "trainer.max_epochs" in result.stdout and "set on the command line" in result.stdout
    saved = OmegaConf.load(first / ".hydra" / "config.yaml")
    assert saved.recipe == "auto-applied"
    assert saved.data.batch_size == 5  # chosen: the folder config's 8 was not kept
    assert saved.trainer.max_epochs == 1  # set on the command line: kept

    second = tmp_path / "second"
    result = run_script("train.py", f"reproduce={first}", f"hydra.run.dir={second}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe=auto:" not in result.stdout  # not chosen again
    assert OmegaConf.load(second / ".hydra" / "config.yaml").data.batch_size == 5
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (first, second)]
    assert metrics[0] == metrics[1]
