"""Checkpoints: clear errors for mismatches, weights_only loading, the trust model (segexp/checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict

import segexp.project
from segexp.model.module import SegModule, build_module
from segexp.run.checkpoint import (
    CheckpointError,
    check_compatible,
    check_trusted,
    load_module,
    read_checkpoint,
    trusted_packages,
)
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
    assert str(error.value).startswith(f"ckpt_path={saved} is untrusted: ")
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


class OwnLoss(torch.nn.CrossEntropyLoss):
    """A user's own loss class, in a package (``tests``) only a command may trust."""


def test_a_trusted_package_of_the_loading_command_is_built(saved):
    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["hyper_parameters"]["loss"] = {"_target_": f"{__name__}.OwnLoss"}
    torch.save(checkpoint, saved)
    with pytest.raises(CheckpointError, match=r"add trust=\[tests\]"):
        load_module(saved)
    assert type(load_module(saved, trust=["tests"]).criterion) is OwnLoss


def test_own_checkpoint_loads_back(saved):
    module = load_module(saved)
    assert module.hparams.num_classes == 6


# The checks on hand-made checkpoint dicts and fake modules (no model built): each error's
# words, and when none is raised.


def no_project(monkeypatch, trusted=None):
    project = None if trusted is None else SimpleNamespace(trusted=trusted)
    monkeypatch.setattr(segexp.project, "find_project", lambda: project)


def test_trusted_packages_are_the_command_line_and_the_project_sorted_once(monkeypatch):
    no_project(monkeypatch)
    assert trusted_packages({"trust": ["b", "a.x", "b"]}) == ["a.x", "b"]
    assert trusted_packages({"trust": None}) == [] == trusted_packages({})
    no_project(monkeypatch, trusted=["mylab"])
    assert trusted_packages({"trust": ["z", "mylab"]}) == ["mylab", "z"]
    assert trusted_packages({}) == ["mylab"]


def test_a_trust_name_that_is_not_a_package_is_refused_by_name(monkeypatch):
    no_project(monkeypatch)
    with pytest.raises(CheckpointError) as error:
        trusted_packages({"trust": ["ok.pkg", "my-lab", "2x"]})
    assert str(error.value) == (
        "trust=['ok.pkg', 'my-lab', '2x']: 'my-lab' is not a Python package name; give "
        "importable names, e.g. trust=[mylab]"
    )


def refused(checkpoint: dict, trust=()) -> str:
    with pytest.raises(CheckpointError) as error:
        check_trusted(checkpoint, "x.ckpt", trust)
    return str(error.value)


TAIL = (
    "Refusing to load it, since a checkpoint from an untrusted source could run any code this "
    "way; {fix}. Trust comes from the command that loads, never from the file."
)


def test_untrusted_targets_are_listed_five_at_most_with_the_packages_to_trust():
    targets = ["os.system", "subprocess.run", "os.remove", "os.rename", "os.mkdir", "os.rmdir"]
    hparams = {f"extra{i}": {"_target_": t} for i, t in enumerate(targets)}
    # allowed, but not as a net: refused without a package to trust
    hparams["net"] = {"_target_": "segexp.model.losses.DiceLoss"}
    message = refused({"hyper_parameters": hparams})
    head, listed = message.split("\n", 1)
    assert head == "ckpt_path=x.ckpt is untrusted: its config asks to build"
    lines = listed.split("\n")
    for i, (line, target) in enumerate(zip(lines[:5], targets)):
        module = target.split(".")[0]
        assert line.startswith(f"  hyper_parameters.extra{i}._target_={target!r}: module ")
        assert f"module {module!r} is not one segexp builds" in line and line.endswith("=[])")
    assert lines[5] == "  ... and 2 more"  # six extras and the net: seven in all
    fix = (
        "if the file is yours and builds your own code, add trust=[os,subprocess] to the "
        "command line (or run inside your segexp project, which trusts its own package)"
    )
    assert lines[6] == TAIL.format(fix=fix)


def test_exactly_five_are_listed_without_a_remainder_and_six_with_one():
    hparams = {f"extra{i}": {"_target_": "os.system"} for i in range(5)}
    lines = refused({"hyper_parameters": hparams}).split("\n")
    assert len(lines) == 7 and "more" not in lines[5]
    hparams["extra5"] = {"_target_": "os.system"}
    lines = refused({"hyper_parameters": hparams}).split("\n")
    assert len(lines) == 8 and lines[6] == "  ... and 1 more"


def test_a_run_config_that_is_not_a_mapping_is_refused():
    message = refused({"hyper_parameters": {}, "run_config": ["data"]})
    assert message == (
        "ckpt_path=x.ckpt is untrusted: its config asks to build\n"
        "  run_config: a list, not a config\n"
        + TAIL.format(fix="use a checkpoint written by segexp train")
    )


def test_the_data_side_is_checked_and_plain_configs_pass():
    check_trusted({}, "x.ckpt")  # nothing to build
    check_trusted({"hyper_parameters": None, "run_config": None}, "x.ckpt")
    check_trusted({"hyper_parameters": ["not", "a", "config"], "run_config": {}}, "x.ckpt")
    check_trusted({"run_config": {"data": None, "seed": 1}}, "x.ckpt")
    message = refused({"run_config": {"data": {"_target_": "subprocess.run"}}})
    assert "  run_config.data._target_='subprocess.run'" in message
    assert "add trust=[subprocess] to the command line" in message


def saved_checkpoint(path: Path, hparams: dict, weights: dict) -> Path:
    torch.save({"hyper_parameters": hparams, "state_dict": weights}, path)
    return path


def fake_module(hparams: dict, weights: dict) -> SimpleNamespace:
    return SimpleNamespace(hparams=hparams, state_dict=lambda: weights)


def hparams(arch="unet", encoder="resnet18", classes=6, optimizer="torch.optim.AdamW"):
    return {
        "net": {"_target_": "segexp.Net", "arch": arch, "encoder_name": encoder},
        "num_classes": classes,
        "optimizer": {"_target_": optimizer},
    }


def test_every_difference_is_named_with_the_settings_that_fit(tmp_path):
    zeros = torch.zeros
    saved = {"a": zeros(6, 3), "b": zeros(2), "c": zeros(1), "n": 5}
    own = {
        "a": zeros(3, 3),
        "b": zeros(2),
        "d": zeros(1),
        "e": zeros(1),
        "f": zeros(1),
        "n": zeros(4),
    }
    path = saved_checkpoint(tmp_path / "x.ckpt", hparams(), saved)
    module = fake_module(hparams("fpn", None, 3, "torch.optim.SGD"), own)
    with pytest.raises(CheckpointError) as error:
        check_compatible(path, module)
    assert str(error.value).split("\n") == [
        f"ckpt_path={path} does not fit this config:",
        "  model.arch: checkpoint 'unet', config 'fpn'",
        "  data.num_classes: checkpoint 6, config 3",
        "  optimizer._target_: checkpoint 'torch.optim.AdamW', config 'torch.optim.SGD'",
        "  1 weight(s) differ in shape, e.g. a (6, 3) vs (3, 3)",
        "  3 weight(s) missing from the checkpoint (e.g. ['d', 'e']), 1 unexpected (e.g. ['c'])",
        "Use a checkpoint trained with the same model and classes, or set model.arch=unet, "
        "data.num_classes=6 to match it (to resume a run exactly, use resume=<run folder>).",
    ]
    with pytest.raises(CheckpointError) as error:  # the optimizer only matters to a resume
        check_compatible(path, module, resume=False)
    assert "optimizer" not in str(error.value)


def test_shapes_alone_are_counted_and_three_shown(tmp_path):
    saved = {k: torch.zeros(2) for k in "abcd"}
    own = {k: torch.zeros(3) for k in "abcd"}
    path = saved_checkpoint(tmp_path / "x.ckpt", hparams(), saved)
    with pytest.raises(CheckpointError) as error:
        check_compatible(path, fake_module(hparams(), own))
    assert str(error.value).split("\n")[1:] == [
        "  4 weight(s) differ in shape, e.g. a (2,) vs (3,); b (2,) vs (3,); c (2,) vs (3,)",
        "Use a checkpoint trained with the same model and classes, or set the checkpoint's "
        "model settings to match it (to resume a run exactly, use resume=<run folder>).",
    ]


def test_a_checkpoint_that_fits_passes(tmp_path):
    weights = {"a": torch.zeros(2, 2)}
    path = saved_checkpoint(tmp_path / "x.ckpt", hparams(), weights)
    check_compatible(path, fake_module(hparams(), {"a": torch.ones(2, 2)}))
    # Another optimizer, or a setting the config leaves unset, is no reason when not resuming.
    other = hparams(encoder=None, optimizer="torch.optim.SGD")
    check_compatible(path, fake_module(other, weights), resume=False)
    with pytest.raises(CheckpointError, match="optimizer._target_: checkpoint 'torch.optim.AdamW'"):
        check_compatible(path, fake_module(other, weights))


@pytest.mark.parametrize("unset", ["None", "???"])
def test_an_unset_path_says_how_to_set_it(unset):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(unset)
    assert str(error.value) == (
        "ckpt_path is not set: pass ckpt_path=<run folder>/checkpoints/last.ckpt"
    )


def test_a_folder_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path)
    assert str(error.value) == f"ckpt_path={tmp_path} is a folder, not a checkpoint file"
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path)
    assert str(error.value) == (
        f"ckpt_path={tmp_path} is a folder, not a checkpoint file (did you mean ckpt_path={last}?)"
    )
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(missing)
    assert str(error.value) == (
        f"ckpt_path={missing} does not exist; a run's checkpoints are in <run folder>/checkpoints/ "
        "(last.ckpt and best-*.ckpt)"
    )


def test_a_file_that_does_not_load_or_is_not_ours_is_named(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"no pickle\nsecond line")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    try:  # what torch itself says about the file
        torch.load(path, weights_only=True)
    except Exception as torch_error:  # noqa: BLE001 (any error torch raises)
        said = f"{type(torch_error).__name__}: {str(torch_error).splitlines()[0]}"
    assert str(error.value) == (
        f"ckpt_path={path} could not be read as a PyTorch checkpoint ({said}). "
        "Is the file complete?"
    )
    assert isinstance(error.value.__cause__, Exception)  # the original error is kept
    foreign = [
        [1, 2],
        {"hyper_parameters": {"x": 1}, "state_dict": {}},
        {"hyper_parameters": {"net": {}}},
    ]
    for content in foreign:
        torch.save(content, path)
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        assert str(error.value) == (
            f"ckpt_path={path} is not a segexp checkpoint (no model config inside); "
            "use a checkpoint written by train.py"
        )
    ours = {"hyper_parameters": {"net": {"arch": "unet"}}, "state_dict": {"w": torch.ones(2)}}
    torch.save(ours, path)
    loaded = read_checkpoint(str(path))
    assert loaded["hyper_parameters"] == ours["hyper_parameters"]
    assert loaded["state_dict"]["w"].tolist() == [1.0, 1.0]


def test_the_trusted_packages_of_the_command_are_what_may_be_built():
    """json.dumps (defined in json) in the loss slot and in the data transforms: refused
    without trust, built with trust=[json] on both sides."""
    checkpoint = {
        "hyper_parameters": {"loss": {"_target_": "json.dumps"}},
        "run_config": {"data": {"train_transforms": [{"_target_": "json.dumps"}]}},
    }
    message = refused(checkpoint)
    assert "hyper_parameters.loss._target_='json.dumps'" in message
    assert "run_config.data.train_transforms[0]._target_='json.dumps'" in message
    assert "add trust=[json] to the command line" in message
    check_trusted(checkpoint, "x.ckpt", ["json"])


def test_the_model_target_and_encoder_are_compared_and_missing_weights_alone_named(tmp_path):
    """Another network builder and encoder: both named (a target is no setting to give);
    missing weights without unexpected ones, and three unexpected ones, two shown."""
    path = saved_checkpoint(tmp_path / "x.ckpt", hparams(), {"a": torch.zeros(1)})
    other = hparams(encoder="resnet34")
    other["net"]["_target_"] = "segexp.Other"
    with pytest.raises(CheckpointError) as error:
        check_compatible(path, fake_module(other, {"a": torch.zeros(1), "b": torch.zeros(1)}))
    assert str(error.value).split("\n")[1:] == [
        "  model._target_: checkpoint 'segexp.Net', config 'segexp.Other'",
        "  model.encoder_name: checkpoint 'resnet18', config 'resnet34'",
        "  1 weight(s) missing from the checkpoint (e.g. ['b']), 0 unexpected (e.g. [])",
        "Use a checkpoint trained with the same model and classes, or set "
        "model.encoder_name=resnet18 to match it (to resume a run exactly, use "
        "resume=<run folder>).",
    ]
    saved = {k: torch.zeros(1) for k in "abcd"}
    path = saved_checkpoint(tmp_path / "y.ckpt", hparams(), saved)
    with pytest.raises(CheckpointError) as error:
        check_compatible(path, fake_module(hparams(), {"a": torch.zeros(1)}))
    assert (
        "  0 weight(s) missing from the checkpoint (e.g. []), 3 unexpected (e.g. ['b', 'c'])"
        in (str(error.value).split("\n"))
    )
