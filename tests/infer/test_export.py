"""segexp.infer.export: ONNX and TorchScript exports agree with PyTorch at sizes they were not traced at."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segexp.infer.export import (
    ExportError,
    export,
    exportable,
    onnx_friendly_ops,
    pool_weights,
    resize_weights,
    run_exported,
)
from segexp.run.checkpoint import load_module
from tests.conftest import CONF, run_script
from tests.tiny_checkpoint import write_checkpoint

MODEL_OPTIONS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
# Seconds each here; the others take tens of seconds per format on a loaded 2-core machine.
QUICK_OPTIONS = {"unet_small", "pspnet"}


def export_cfg(compose_cfg, ckpt, *overrides):
    return compose_cfg([f"ckpt_path={ckpt}", *overrides], config_name="export")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "dynamo"), [("onnx", False), ("onnx", True), ("torchscript", False)]
)
def test_export_has_dynamic_batch_and_size(tmp_path, compose_cfg, fmt, dynamo):
    pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)
    result = export(export_cfg(compose_cfg, ckpt, f"format={fmt}", f"dynamo={dynamo}"))
    path = result["path"]
    assert path == ckpt.with_suffix(".onnx" if fmt == "onnx" else ".pt") and path.is_file()
    assert result["max_abs_diff"] < 1e-3
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["class_names"] == ["c0", "c1", "c2"] and meta["mean"] == [0.4, 0.5, 0.6]
    # Independently of the built-in check: a batch size and sizes unlike the traced 1x70x90.
    module = load_module(ckpt).eval()
    for shape in [(3, 3, 41, 77), (1, 3, 64, 32)]:
        images = torch.randn(*shape)
        with torch.no_grad():
            expected = module(images).numpy()
        got = run_exported(path, fmt, images)
        assert got.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_bad_format_is_a_clear_error(tmp_path, compose_cfg):
    with pytest.raises(ExportError, match="valid formats are onnx, torchscript"):
        export(export_cfg(compose_cfg, tmp_path / "x.ckpt", "format=tflite"))


@pytest.mark.slow
def test_cli_export_prints_parity(tmp_path, compose_cfg):
    pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)
    out = tmp_path / "model.onnx"
    result = run_script(
        "-m", "segexp.export", f"ckpt_path={ckpt}", f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and "parity check passed: max abs diff" in result.stdout


@pytest.mark.slow
def test_cli_failed_parity_check_exits_1(tmp_path, compose_cfg):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)
    result = run_script(
        "-m", "segexp.export", f"ckpt_path={ckpt}", "format=torchscript", "atol=-1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "parity check failed" in result.stderr and "Traceback" not in result.stderr


def test_traceable_padding_is_the_networks_padding(tmp_path, compose_cfg):
    """The export's always-on padding gives what the network's own padding gives."""
    net = load_module(write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)).net
    traceable = exportable(SimpleNamespace(net=net))
    assert traceable.traceable and traceable.net is net.net and traceable.multiple == net.multiple
    for shape in [(1, 3, 64, 96), (2, 3, 41, 77), (1, 3, 17, 33)]:
        images = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(traceable(images), net(images))


@pytest.fixture(scope="module")
def option_checkpoint(tmp_path_factory):
    """option_checkpoint(name) -> a random-init checkpoint of model=<name> (3 classes), written
    once per module from the composed train config, as train.py would build it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from segexp.model.module import build_module

    root = tmp_path_factory.mktemp("options")
    written = {}

    def make(name: str):
        if name not in written:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("train", [f"model={name}", "data.num_classes=3", "augment=none"])
            with open_dict(cfg):
                cfg.paths.output_dir = str(root / "run")
            torch.manual_seed(0)
            module = build_module(cfg).eval()
            checkpoint = {
                "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict(),
                "run_config": OmegaConf.to_container(cfg, resolve=True),
            }
            written[name] = root / f"{name}.ckpt"
            torch.save(checkpoint, written[name])
        return written[name]

    return make


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(
    "option",
    [o if o in QUICK_OPTIONS else pytest.param(o, marks=pytest.mark.slow) for o in MODEL_OPTIONS],
)
def test_every_model_option_exports_with_dynamic_sizes(
    option, fmt, option_checkpoint, compose_cfg, tmp_path
):
    """Each conf/model/ option exports to both formats and matches the checkpoint's eager
    module at sizes other than the traced one, tiny and padded ones included (PAN pads 20 px
    to 128): compared here on inputs of our own, not only by the exporter's own check."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    ckpt = option_checkpoint(option)
    out = tmp_path / f"{option}.{fmt}"
    cfg = export_cfg(
        compose_cfg, ckpt, f"format={fmt}", f"output={out}", "height=35", "width=45",
        "check_sizes=[[2,32,48],[1,20,33]]",
    )  # fmt: skip
    result = export(cfg)
    assert result["dynamic"] and result["max_abs_diff"] < 1e-3
    module = load_module(ckpt).eval()
    generator = torch.Generator().manual_seed(1)  # other inputs than the exporter's check
    for shape in [(2, 3, 32, 48), (1, 3, 20, 33)]:
        images = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = module(images).numpy()
        got = run_exported(out, fmt, images)
        assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, expected, atol=1e-3)
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["dynamic"] is True and meta["input_size"] is None
    if fmt == "onnx":  # the operators ONNX cannot write at a dynamic size were swapped
        expected = {
            "dpt": ["antialiased bicubic resize"],
            "pspnet": ["adaptive_avg_pool2d"],
            "upernet": ["adaptive_avg_pool2d"],
        }
        if option in expected:
            assert meta["replaced_ops"] == expected[option]


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("size_in", "size_out"), [((14, 14), (4, 6)), ((7, 9), (30, 2))])
def test_resize_weights_are_torchs_antialiased_resize(mode, size_in, size_out):
    images = torch.randn(2, 5, *size_in)
    expected = torch.nn.functional.interpolate(images, size=size_out, mode=mode, antialias=True)
    rows = resize_weights(size_in[0], size_out[0], mode)
    cols = resize_weights(size_in[1], size_out[1], mode)
    torch.testing.assert_close(rows @ images @ cols.T, expected, atol=1e-5, rtol=1e-5)
    with onnx_friendly_ops() as replaced:  # and the swap inside the export block is the same
        got = torch.nn.functional.interpolate(images, size=size_out, mode=mode, antialias=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert replaced == {f"antialiased {mode} resize"}
    assert torch.nn.functional.interpolate.__name__ == "interpolate"  # restored


@pytest.mark.parametrize("size_in", [(5, 7), (1, 1), (3, 13), (12, 12)])
def test_pool_weights_are_adaptive_avg_pool(size_in):
    images = torch.randn(2, 4, *size_in)
    for bins in (1, 2, 3, 6):
        expected = torch.nn.functional.adaptive_avg_pool2d(images, bins)
        got = pool_weights(size_in[0], bins) @ images @ pool_weights(size_in[1], bins).T
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_fixed_size_export_says_so(tmp_path, compose_cfg, capsys):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)
    cfg = export_cfg(
        compose_cfg,
        ckpt,
        "format=torchscript",
        "dynamic=false",
        "input_size=[40,56]",
        "batch_size=2",
    )
    result = export(cfg)
    assert not result["dynamic"] and result["max_abs_diff"] < 1e-3
    assert "fixed size 2x3x40x56 (dynamic=false)" in capsys.readouterr().out
    meta = json.loads(ckpt.with_suffix(".pt.json").read_text())
    assert meta["dynamic"] is False and meta["input_size"] == [2, 3, 40, 56]


def test_failed_export_is_one_paragraph_naming_the_option(tmp_path, compose_cfg, monkeypatch):
    import segexp.infer.export as export_module

    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' is not supported\nmore")

    monkeypatch.setattr(export_module, "export_onnx", broken)
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, num_classes=3)
    with pytest.raises(ExportError) as caught:
        export(export_cfg(compose_cfg, ckpt, "format=onnx"))
    message = str(caught.value)
    assert "model.arch='unet'" in message and "aten::frobnicate" in message
    assert "format=torchscript" in message and "dynamic=false" in message and "\n" not in message
