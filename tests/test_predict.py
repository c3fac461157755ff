"""predict.py: masks equal the network's argmax, odd inputs handled, broken files reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.data import viz
from segexp.infer.predict import InputError, collect_inputs, predict, unique_stems
from segexp.run.checkpoint import load_module
from tests.conftest import run_script
from tests.tiny_checkpoint import normalise, write_checkpoint

NUM_CLASSES = 3


@pytest.fixture
def inputs(tmp_path):
    """A folder of new images: RGB (two sizes), grayscale, RGBA, a broken PNG and a text file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "new"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
        folder / "b.jpg", quality=95
    )
    Image.fromarray(rng.integers(0, 256, (33, 45), dtype=np.uint8), mode="L").save(
        folder / "gray.png"
    )
    Image.fromarray(rng.integers(0, 256, (36, 30, 4), dtype=np.uint8), mode="RGBA").save(
        folder / "rgba.png"
    )
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def expected_labels(ckpt, path):
    """The argmax of the network on the image read independently (PIL convert to RGB)."""
    module = load_module(ckpt).eval()
    image = np.asarray(Image.open(path).convert("RGB"))
    with torch.no_grad():
        logits = module(normalise(image, module.hparams.mean, module.hparams.std))[0]
    return logits.argmax(0).numpy(), logits.softmax(0).numpy()


def predict_cfg(compose_cfg, ckpt, input_path, output, *overrides):
    return compose_cfg(
        [
            f"ckpt_path={ckpt}",
            f"input={input_path}",
            f"output={output}",
            "progress=false",
            *overrides,
        ],
        config_name="predict",
    )


@pytest.mark.slow
def test_predict_folder_writes_masks_overlays_probs(tmp_path, inputs, compose_cfg):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, NUM_CLASSES)
    out = tmp_path / "out"
    result = predict(predict_cfg(compose_cfg, ckpt, inputs, out, "save_probs=true", "batch_size=3"))
    assert sorted(result["written"]) == ["a", "b", "gray", "rgba"]
    assert set(result["failed"]) == {str(inputs / "broken.png"), str(inputs / "notes.txt")}
    palette = viz.palette(NUM_CLASSES)
    for name, source in [("a", "a.png"), ("gray", "gray.png"), ("rgba", "rgba.png")]:
        labels, probs = expected_labels(ckpt, inputs / source)
        with Image.open(out / "masks" / f"{name}.png") as mask:
            assert mask.mode == "P"
            np.testing.assert_array_equal(np.asarray(mask), labels)  # pixel values = class ids
            assert mask.getpalette()[: 3 * NUM_CLASSES] == palette.reshape(-1).tolist()
        with Image.open(out / "overlays" / f"{name}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (labels.shape[1], labels.shape[0])
        saved = np.load(out / "probs" / f"{name}.npy")
        assert saved.shape == (NUM_CLASSES, *labels.shape)
        np.testing.assert_allclose(saved.astype(np.float32), probs, atol=2e-3)


@pytest.mark.slow
def test_cli_predict_reports_broken_files_and_exits_nonzero(tmp_path, inputs, compose_cfg):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, NUM_CLASSES)
    out = tmp_path / "out"
    result = run_script(
        "predict.py", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "save_overlays=false",
        "inference=tta", "inference.scales=[1.0]", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "broken.png" in result.stderr and "notes.txt" in result.stderr
    assert "4 of 6 images predicted" in result.stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "a.png",
        "b.png",
        "gray.png",
        "rgba.png",
    ]
    assert not (out / "overlays").exists()


def test_collect_inputs_file_folder_glob(tmp_path, inputs):
    assert collect_inputs(str(inputs / "a.png")) == [inputs / "a.png"]
    assert len(collect_inputs(str(inputs))) == 6
    assert collect_inputs(str(inputs / "*.png")) == sorted(
        inputs / n for n in ("a.png", "broken.png", "gray.png", "rgba.png")
    )
    with pytest.raises(InputError, match="does not exist"):
        collect_inputs(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="matches no files"):
        collect_inputs(str(inputs / "*.tif"))
    assert unique_stems([inputs / "a.png", inputs / "a.jpg", inputs / "b.png"]) == ["a", "a_1", "b"]


def test_cli_predict_missing_input_is_a_clear_error(tmp_path):
    result = run_script(
        "predict.py", f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={tmp_path / 'nothing'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_help_does_not_import_torch():
    result = run_script("-X", "importtime", "predict.py", "--help")
    assert result.returncode == 0 and "inference: " in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported


def test_image_over_max_pixels_fails_alone(tmp_path, compose_cfg):
    """Issue 29: a 13000x13000 PNG aborted the whole run; now it fails alone, by name."""
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", compose_cfg, NUM_CLASSES)
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.new("RGB", (1300, 1000)).save(folder / "huge.png")  # 1.3 MP, over the limit below
    out = tmp_path / "out"
    result = predict(predict_cfg(compose_cfg, ckpt, folder, out, "max_pixels=1000000"))
    assert result["written"] == ["small"]
    reason = result["failed"][str(folder / "huge.png")]
    assert "1300x1000 = 1.3 MP is over max_pixels=1000000" in reason
    assert (out / "masks" / "small.png").is_file() and not (out / "masks" / "huge.png").exists()
    limit = 1300 * 1000  # exactly at the limit: predicted
    result = predict(predict_cfg(compose_cfg, ckpt, folder, out, f"max_pixels={limit}"))
    assert sorted(result["written"]) == ["huge", "small"]
