"""Every target a checkpoint may name, in every slot a checkpoint has, with hostile arguments:
refused, or built without a file written, within a second (segexp/run/trust.py).

The walk covers the union of all slots' allowlists plus the writers that were once on one
(``generate_shapes``, smp's architectures, FCN, which fetch weights): each is put in each
slot with its path-like arguments pointing outside the run and its counts at 1e9. What
``check_trusted`` accepts is then built the way the loading commands build it: the model
slots through ``instantiate`` under ``skip_encoder_weights`` (``load_module``), the data side
through ``checkpoint_data`` and the data module's dataset (``segexp eval``). Each build runs
in a forked child, timed, with HOME and the caches pointing into the watched folder.
"""

from __future__ import annotations

import copy
import inspect
import multiprocessing
import os
import re
import time
from pathlib import Path

import pytest

from segexp.run.checkpoint import CheckpointError, check_trusted
from segexp.run.trust import allowed_callables, checkpoint_data

HUGE = 10**9
PATHLIKE = re.compile(r"root|path|dir|file|cache|save|log|out|url")
COUNTLIKE = re.compile(
    r"num|count|classes|size|depth|channels|steps|workers|max|limit|height|width"
)

GOOD_HPARAMS = {
    "net": {"_target_": "segexp.model.networks.build_model", "arch": "unet", "classes": 3},
    "loss": {"_target_": "segexp.model.losses.CrossEntropyLoss"},
    "optimizer": {"_target_": "segexp.model.optim.build_optimizer", "_partial_": True},
    "scheduler": None,
    "num_classes": 3,
    "class_names": ["a", "b", "c"],
}
GOOD_DATA = {
    "_target_": "segexp.data.datamodule.SegDataModule",
    "root": "/data/x",
    "num_classes": 3,
    "dataset": {
        "_target_": "segexp.data.datasets.FolderDataset",
        "_partial_": True,
        "root": "/data/x",
    },
    "train_transforms": [{"_target_": "albumentations.HorizontalFlip"}],
    "val_transforms": [{"_target_": "albumentations.HorizontalFlip"}],
}
# Where a checkpoint can put a config: (section, key path inside it).
SLOTS = [
    ("hyper_parameters", ("net",)),
    ("hyper_parameters", ("loss",)),
    ("hyper_parameters", ("optimizer",)),
    ("hyper_parameters", ("scheduler",)),
    ("hyper_parameters", ("class_names",)),
    ("data", ()),
    ("data", ("dataset",)),
    ("data", ("train_transforms", 0)),
    ("data", ("val_transforms", 0)),
    ("data", ("generate",)),
    ("data", ("num_workers",)),
]


def targets() -> dict[str, object]:
    """dotted name -> object: every allowlisted callable and the writers once allowed."""
    import segmentation_models_pytorch as smp

    from segexp.data.datamodule import SegDataModule
    from segexp.data.shapes import generate_shapes
    from segexp.model.networks import FCN

    objects = [obj for slot in allowed_callables().values() for obj in slot.values()]
    objects += [generate_shapes, SegDataModule, FCN, *smp.MODEL_ARCHITECTURES_MAPPING.values()]
    return {f"{obj.__module__}.{obj.__qualname__}": obj for obj in objects}


def hostile(obj, outside: Path) -> dict:
    """Arguments aimed at harm: paths outside the run, counts of 1e9, weights to fetch."""
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return {}
    args: dict = {}
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "params", "module"):
            continue
        if "weights" in p.name and "encoder" in p.name:
            args[p.name] = "imagenet"
        elif PATHLIKE.search(p.name):
            args[p.name] = str(outside / p.name)
        elif COUNTLIKE.search(p.name) or (
            isinstance(p.default, int) and not isinstance(p.default, bool)
        ):
            args[p.name] = HUGE
        elif p.name == "arch":
            args[p.name] = "unet"
    return args


def place(section: str, path: tuple, node: dict) -> dict:
    checkpoint = {
        "hyper_parameters": copy.deepcopy(GOOD_HPARAMS),
        "run_config": {"data": copy.deepcopy(GOOD_DATA)},
        "state_dict": {},
    }
    parent = (
        checkpoint["hyper_parameters"]
        if section == "hyper_parameters"
        else checkpoint["run_config"]
    )
    if section == "data" and not path:
        parent["data"] = {**parent["data"], **node}
        return checkpoint
    if section == "data":
        parent = parent["data"]
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = node
    return checkpoint


def build(section: str, slot: str, checkpoint: dict) -> None:
    """What the loading commands build from an accepted checkpoint's ``slot`` (the other
    slots hold segexp's own configs)."""
    import torch
    from hydra.utils import instantiate

    from segexp.model.encoder_weights import skip_encoder_weights

    if section == "hyper_parameters":
        node = checkpoint["hyper_parameters"][slot]
        with skip_encoder_weights():  # as load_module builds a checkpoint's SegModule
            built = instantiate(node)
        if slot in ("optimizer", "scheduler") and callable(built):  # partials: called in fit
            optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
            built(torch.nn.Linear(1, 1)) if slot == "optimizer" else built(optimizer, 10)
        return
    config, problems = checkpoint_data(checkpoint["run_config"]["data"])
    assert not problems
    config.pop("generated", None)
    module = instantiate(config, num_classes=3)
    module.dataset_factory(split="test")


def child(section: str, slot: str, checkpoint: dict, home: Path, queue) -> None:
    for name in ("HOME", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME"):
        os.environ[name] = str(home)
    os.chdir(home)
    start = time.perf_counter()
    try:
        build(section, slot, checkpoint)
        outcome = "built"
    except Exception as error:  # a constructor refusing its arguments is a refusal
        outcome = f"raised {type(error).__name__}"
    queue.put((outcome, time.perf_counter() - start))


def files_under(*folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in folder.rglob("*")]


@pytest.mark.slow
def test_every_allowlisted_target_in_every_slot_is_refused_or_harmless(tmp_path):
    outside, home = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    home.mkdir()
    context = multiprocessing.get_context("fork")
    tried, refused, built, slow, wrote = 0, 0, [], [], []
    for name, obj in sorted(targets().items()):
        node = {"_target_": name, **hostile(obj, outside)}
        if inspect.isclass(obj) and "dataset" in name.lower() or name.endswith("build_optimizer"):
            node["_partial_"] = True
        for section, path in SLOTS:
            tried += 1
            checkpoint = place(section, path, node)
            try:
                check_trusted(checkpoint, "walk.ckpt")
            except CheckpointError:
                refused += 1
                continue
            queue = context.Queue()
            process = context.Process(
                target=child, args=(section, path[0] if path else "", checkpoint, home, queue)
            )
            process.start()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
                slow.append(f"{name} in {section}.{path}: over 5 s")
                continue
            outcome, seconds = queue.get(timeout=5)
            built.append(f"{name} in {section}.{path}: {outcome} in {seconds:.2f}s")
            if seconds > 1.0:
                slow.append(built[-1])
            if files_under(outside, home):
                wrote.append(f"{name} in {section}.{path}: {files_under(outside, home)[:3]}")
    print("\n".join(built))
    print(f"{tried} target x slot pairs: {refused} refused, {len(built)} accepted and built")
    assert not wrote, wrote
    assert not slow, slow
    assert refused + len(built) == tried and len(built) > 0


def test_recorded_generated_dataset_is_read_never_drawn(tmp_path, compose_cfg):
    """A shapes run's data config comes back as plain data: SegDataModule fixed by the code,
    the recipe a record; with the dataset absent the error prints the command that draws it,
    and nothing is written."""
    from omegaconf import OmegaConf

    from segexp.errors import UserError
    from segexp.infer.checkpoint_data import recorded_data

    recorded = OmegaConf.to_container(compose_cfg().data, resolve=True)
    recorded["generate"]["num_train"] = HUGE
    recorded["dataset"]["cache_dir"] = str(tmp_path / "elsewhere")
    config, problems = checkpoint_data(recorded)
    assert problems == [] and config["_target_"] == "segexp.data.datamodule.SegDataModule"
    assert "generate" not in config and config["generated"]["num_train"] == HUGE
    assert "cache_dir" not in config["dataset"]
    data_dir = tmp_path / "data"
    cfg = OmegaConf.create({"ckpt_path": "x.ckpt", "paths": {"data_dir": str(data_dir)}})
    with pytest.raises(UserError, match=r"never run.*data=shapes .*data\.generate\.seed=0"):
        recorded_data(cfg, recorded)
    assert not data_dir.exists() and not (tmp_path / "elsewhere").exists()
    root = data_dir / Path(recorded["root"]).name
    (root / "images").mkdir(parents=True)  # drawn before, by the command's own config
    data = recorded_data(cfg, recorded)
    assert data.root == str(root) and data.dataset.root == str(root)
