"""init_from= (segexp.model.transfer): weights only, matched by name and shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from safetensors.torch import save_file

from segexp.errors import UserError
from segexp.model import transfer
from segexp.model.networks import PadToMultiple, build_model
from tests.conftest import CONF
from tests.fixtures_data import make_folder

MODELS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
SMALL = {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}


def unet(classes: int, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", "resnet18", None, classes=classes, **{**SMALL, **kwargs})


def tensors_equal(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


# ----------------------------------------------------------------------------- init_from


@pytest.mark.parametrize("layout", ["ckpt", "pt-model", "pt-plain", "safetensors"])
def test_matching_tensors_load_and_a_new_head_keeps_its_init(tmp_path, layout):
    source = unet(classes=6, seed=0)
    target = PadToMultiple(unet(classes=4, seed=1))
    fresh = {k: v.clone() for k, v in target.net.state_dict().items()}
    state = source.state_dict()
    path = tmp_path / f"weights.{'safetensors' if layout == 'safetensors' else 'pt'}"
    if layout == "ckpt":  # a segexp checkpoint: SegModule.net (PadToMultiple).net, and metrics
        nested = {f"net.net.{k}": v for k, v in state.items()}
        nested["confmats.val.confmat"] = torch.zeros(6, 6)
        torch.save({"state_dict": nested, "epoch": 3, "optimizer_states": []}, path)
    elif layout == "pt-model":
        torch.save({"model": state, "epoch": 3}, path)
    elif layout == "pt-plain":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    report = transfer.init_network(target, path)

    loaded = target.net.state_dict()
    assert tensors_equal(loaded, state, "encoder.") and tensors_equal(loaded, state, "decoder.")
    head = [k for k in loaded if k.startswith("segmentation_head.")]
    assert head and all(torch.equal(loaded[k], fresh[k]) for k in head)
    assert sorted(n.split(":")[0] for n in report.shape_mismatch) == sorted(head)
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == len(loaded) - len(head)
    text = report.text()
    assert "segmentation_head.0.weight: file (6, 8, 3, 3) vs network (4, 8, 3, 3)" in text
    assert f"loaded {len(report.loaded)} of {len(loaded)} tensors" in text


def test_encoder_part_loads_only_the_encoder(tmp_path):
    source, target = unet(classes=4, seed=0), unet(classes=4, seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    torch.save(source.state_dict(), tmp_path / "w.pth")
    report = transfer.init_network(target, tmp_path / "w.pth", part="encoder")
    now = target.state_dict()
    assert tensors_equal(now, source.state_dict(), "encoder.")
    assert tensors_equal(now, fresh, "decoder.") and tensors_equal(now, fresh, "segmentation_head.")
    assert report.outside_part > 0 and not report.skipped


def test_encoder_only_file_is_mapped_under_encoder(tmp_path):
    """A bare backbone's state dict (conv1.weight, layer1...) goes to encoder.*."""
    source, target = unet(classes=4, seed=0), unet(classes=4, seed=1)
    torch.save(source.encoder.state_dict(), tmp_path / "backbone.pt")
    report = transfer.init_network(target, tmp_path / "backbone.pt", part="encoder")
    assert tensors_equal(target.state_dict(), source.state_dict(), "encoder.")
    assert not report.skipped


def test_strict_refuses_any_mismatch_and_lists_it(tmp_path):
    torch.save(unet(classes=6, seed=0).state_dict(), tmp_path / "w.pt")
    target = unet(classes=4, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match="init_from_strict=true") as caught:
        transfer.init_network(target, tmp_path / "w.pt", strict=True)
    assert "segmentation_head.0.weight" in str(caught.value)
    assert tensors_equal(target.state_dict(), before)  # nothing was loaded
    # The encoder alone fits: strict is satisfied within the part.
    report = transfer.init_network(target, tmp_path / "w.pt", part="encoder", strict=True)
    assert report.loaded and not report.skipped


def test_unrelated_or_unreadable_files_are_clear_errors(tmp_path):
    target = unet(classes=4, seed=0)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no tensor matches the network"):
        transfer.init_network(target, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read as tensors"):
        transfer.init_network(target, tmp_path / "junk.pt")
    with pytest.raises(UserError, match="is not a file"):
        transfer.init_network(target, tmp_path / "absent.ckpt")
    with pytest.raises(UserError, match="init_from_part"):
        transfer.init_network(target, tmp_path / "other.pt", part="decoder")


class Payload:
    """A pickled object: loading it would need code, which weights_only refuses."""


def test_a_file_that_needs_code_to_load_is_refused(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only=True"):
        transfer.init_network(unet(classes=4, seed=0), tmp_path / "evil.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_model_option_transfers_from_its_checkpoint(compose_cfg, tmp_path, name):
    """A 6-class checkpoint of each model option into a 4-class network of the same option."""
    source_cfg = compose_cfg([f"model={name}"])
    with open_dict(source_cfg):
        source_cfg.model.classes = 6
    torch.manual_seed(0)
    source = PadToMultiple(instantiate(source_cfg.model))
    state = {f"net.{k}": v for k, v in source.state_dict().items()}  # SegModule.net. prefix
    torch.save({"state_dict": state}, tmp_path / "source.ckpt")
    with open_dict(source_cfg):
        source_cfg.model.classes = 4
    torch.manual_seed(1)
    target = PadToMultiple(instantiate(source_cfg.model))
    report = transfer.init_network(target, tmp_path / "source.ckpt")
    assert tensors_equal(target.net.state_dict(), source.net.state_dict(), "encoder.")
    assert report.shape_mismatch and not report.missing and not report.unexpected


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_train_on_shapes_then_init_from_on_a_four_class_folder(compose_cfg, tmp_path, caplog):
    from segexp.model.module import build_module
    from segexp.run.lifecycle import train

    source_cfg = compose_cfg()  # 6 classes (shapes)
    train(source_cfg)
    ckpt = Path(source_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    source = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]

    root = tmp_path / "folder"
    make_folder(root, counts={"train": 4, "val": 2, "test": 2}, num_classes=4)
    cfg = compose_cfg(
        ["data=folder", f"data.root={root}", "data.num_classes=4", f"init_from={ckpt}"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "transfer")

    module = build_module(cfg)
    fresh = {k: v.clone() for k, v in module.state_dict().items()}
    report = transfer.init_from_config(cfg, module)
    now = module.state_dict()
    encoder = [k for k in now if k.startswith("net.net.encoder.")]
    assert encoder and all(torch.equal(now[k], source[k]) for k in encoder)
    head = [k for k in now if k.startswith("net.net.segmentation_head.")]
    assert head and all(torch.equal(now[k], fresh[k]) for k in head)
    assert not torch.equal(now[head[0]][:4], source[head[0]][:4])

    with caplog.at_level(logging.INFO, logger="segexp.model.transfer"):
        metrics = train(cfg)
    assert "test/mIoU" in metrics and "val/mIoU" in metrics
    assert "segmentation_head.0.weight: file (6, 16, 3, 3) vs network (4, 16, 3, 3)" in caplog.text
    info = json.loads((tmp_path / "transfer" / "run_info.json").read_text())
    assert info["packages"]["torch"]  # merged into the run's metadata, not replacing it
    record = info["init_from"]
    assert record["path"] == str(ckpt.resolve())
    assert record["sha256"] == transfer.sha256(ckpt)
    assert record["loaded"] == len(report.loaded)
    assert {n.split(":")[0] for n in record["shape_mismatch"]} == {
        k.removeprefix("net.net.") for k in head
    }
