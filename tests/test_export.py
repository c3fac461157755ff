"""segexp.infer.export: ONNX and TorchScript exports agree with PyTorch at sizes they were not traced at."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segexp.infer.export import ExportError, export, run_exported
from segexp.run.checkpoint import load_module
from tests.conftest import run_script
from tests.tiny_checkpoint import write_checkpoint


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
        "-m",
        "segexp.infer.export",
        f"ckpt_path={ckpt}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and "parity check passed: max abs diff" in result.stdout
