"""Every option of every config group composes, resolves and names real code."""

from __future__ import annotations

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from tests.conftest import CONF

# Groups whose options need user-provided values to resolve.
NEEDS = {
    ("data", "folder"): ["data.root=/tmp/x", "data.num_classes=3"],
    **{("data", name): ["data.root=/tmp/x"] for name in ("voc", "cityscapes", "ade20k", "coco")},
}
ENTRY_GROUPS = [
    "data",
    "augment",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
]


def group_options():
    for group in ENTRY_GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def collect_targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from collect_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from collect_targets(value)


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}", *NEEDS.get((group, option), [])])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    for target in collect_targets(container[group] if group in container else {}):
        get_method(target)  # every _target_ imports


def test_experiment_options_compose(compose_cfg):
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose_cfg([f"experiment={path.stem}"])
        OmegaConf.to_container(cfg, resolve=True)


def test_num_classes_is_single_source(compose_cfg):
    cfg = compose_cfg(["data.num_classes=9", "data.class_names=null"])
    assert cfg.model.classes == 9


def test_eval_config_composes(compose_cfg):
    cfg = compose_cfg(["ckpt_path=x.ckpt"], config_name="eval")
    assert cfg.split == "test" and cfg.get("data") is None
