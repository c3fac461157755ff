"""evaluate.py: every reported figure against an independent numpy computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from segexp.data.datasets.base import DataError
from segexp.infer.evaluate import evaluate
from segexp.run.checkpoint import load_module
from segexp.run.report import (
    format_report,
    plot_confusion,
    read_confusion_csv,
    write_confusion_csv,
)
from tests.conftest import run_script
from tests.model.test_metrics import numpy_confmat, numpy_reference
from tests.tiny_checkpoint import IGNORE, normalise, write_checkpoint, write_folder_dataset

NUM_CLASSES = 4
# Targets hold classes 0-2; class 2 is never predicted (target only), class 3 is in neither.
NEVER_PREDICT = (2, 3)


@pytest.fixture
def setup(tmp_path, compose_cfg):
    root = write_folder_dataset(tmp_path / "folder", labels=(0, 1, 2))
    ckpt = write_checkpoint(
        tmp_path / "ckpt" / "tiny.ckpt", compose_cfg, NUM_CLASSES, NEVER_PREDICT
    )
    return root, ckpt


def numpy_predictions(ckpt: Path, root: Path, split: str, postprocess=None):
    """Each image through the network on its own, argmax'd; masks read with PIL: flat arrays."""
    module = load_module(ckpt).eval()
    preds, targets = [], []
    for image_path in sorted((root / "images" / split).glob("*.png")):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        with torch.no_grad():
            logits = module(normalise(image, module.hparams.mean, module.hparams.std))[0]
        pred = logits.argmax(0).numpy()
        if postprocess is not None:
            pred = postprocess(pred)
        preds.append(pred.ravel())
        targets.append(np.asarray(Image.open(root / "masks" / split / image_path.name)).ravel())
    return np.concatenate(preds), np.concatenate(targets).astype(np.int64)


def eval_cfg(compose_cfg, ckpt, root, *overrides):
    cfg = compose_cfg(
        [
            f"ckpt_path={ckpt}",
            "data=folder",
            f"data.root={root}",
            "data.num_workers=0",
            "batch_size=2",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
        config_name="eval",
    )
    return cfg


def check_against_numpy(metrics, run, pred, target, split):
    ref = numpy_reference(pred, target, NUM_CLASSES)
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    for key in ("mIoU", "pixel_acc", "mean_acc", "mean_dice", "fw_iou"):
        # Lightning logs float32: 1e-6 relative.
        assert metrics[f"{split}/{key}"] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), key
    for key in ("iou", "acc", "dice"):
        for index, name in enumerate(names):
            value = metrics[f"{split}/{key}/{name}"]
            if np.isnan(ref[key][index]):
                assert np.isnan(value), (key, name)
            else:
                assert value == pytest.approx(ref[key][index], rel=1e-6, abs=1e-7), (key, name)
    written = json.loads((run / "metrics.json").read_text())
    assert written[f"{split}/mIoU"] == pytest.approx(ref["mIoU"])
    assert written[f"{split}/iou/c3"] is None  # NaN is written as null
    csv_names, confmat = read_confusion_csv(run / "confusion.csv")
    assert csv_names == names
    np.testing.assert_array_equal(confmat, numpy_confmat(pred, target, NUM_CLASSES))
    with Image.open(run / "confusion.png") as png:
        assert png.format == "PNG" and min(png.size) > 200


@pytest.mark.slow
def test_evaluate_folder_matches_numpy(setup, compose_cfg, capsys):
    root, ckpt = setup
    cfg = eval_cfg(compose_cfg, ckpt, root, "split=val")
    metrics = evaluate(cfg)
    pred, target = numpy_predictions(ckpt, root, "val")
    # The test data must exercise the edge cases: ignored pixels, classes absent from pred/target.
    assert (target == IGNORE).any() and not (pred == 2).any() and not (target == 3).any()
    assert (target == 2).any() and len(set(pred.tolist())) >= 2
    check_against_numpy(metrics, Path(cfg.paths.output_dir), pred, target, "val")
    printed = capsys.readouterr().out
    for text in ("mean Dice", "frequency-weighted IoU", "val/mIoU", "c2", "confusion.png"):
        assert text in printed


def swap_first_two(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """A postprocess for tests: classes 0 and 1 trade probabilities."""
    return probs[[1, 0, *range(2, len(probs))]]


def numpy_slide_flip(ckpt: Path, root: Path, split: str):
    """Slide + flip by hand: 40x56 images, 40x32 windows at columns 0 and 24 (logits averaged
    where they overlap), the mirrored image likewise and mirrored back, softmax of each averaged;
    then classes 0 and 1 swapped (swap_first_two). Flat predictions and targets."""
    module = load_module(ckpt).eval()
    preds, targets = [], []
    for image_path in sorted((root / "images" / split).glob("*.png")):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        assert image.shape[:2] == (40, 56)
        probs = 0
        for flipped in (False, True):
            pixels = np.ascontiguousarray(image[:, ::-1] if flipped else image)
            inputs = normalise(pixels, module.hparams.mean, module.hparams.std)
            total, count = np.zeros((NUM_CLASSES, 40, 56)), np.zeros((1, 40, 56))
            for left in (0, 24):
                with torch.no_grad():
                    total[:, :, left : left + 32] += module(inputs[..., left : left + 32])[
                        0
                    ].numpy()
                count[:, :, left : left + 32] += 1
            logits = total / count
            if flipped:
                logits = logits[:, :, ::-1]
            probs = probs + np.exp(logits) / np.exp(logits).sum(0)
        preds.append(swap_first_two(image, probs).argmax(0).ravel())
        targets.append(np.asarray(Image.open(root / "masks" / split / image_path.name)).ravel())
    return np.concatenate(preds), np.concatenate(targets).astype(np.int64)


@pytest.mark.slow
def test_evaluate_applies_inference_and_postprocess(setup, compose_cfg):
    root, ckpt = setup
    # Slide (2 windows) + flip TTA, then a postprocess that swaps classes 0 and 1: the
    # figures must be those of the same steps done by hand. (Multi-scale: test_inference.py.)
    cfg = eval_cfg(
        compose_cfg, ckpt, root, "inference=slide", "inference.crop_size=[40,32]",
        "inference.stride=[40,24]", "inference.hflip=true",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.postprocess = {"_target_": "tests.test_evaluate.swap_first_two", "_partial_": True}
    metrics = evaluate(cfg)
    pred, target = numpy_slide_flip(ckpt, root, "test")
    whole, _ = numpy_predictions(ckpt, root, "test")
    assert (pred != np.where(whole < 2, 1 - whole, whole)).any()  # the windows and flip count
    check_against_numpy(metrics, Path(cfg.paths.output_dir), pred, target, "test")


@pytest.mark.slow
def test_evaluate_slide_with_crop_over_image_equals_whole(setup, compose_cfg, tmp_path):
    root, ckpt = setup
    whole = evaluate(eval_cfg(compose_cfg, ckpt, root))
    slide_cfg = eval_cfg(compose_cfg, ckpt, root, "inference=slide", "inference.crop_size=64")
    slide_cfg.paths.output_dir = str(tmp_path / "slide")
    slide = evaluate(slide_cfg)
    for key in ("test/mIoU", "test/pixel_acc", "test/iou/c0", "test/loss"):
        assert slide[key] == pytest.approx(whole[key], abs=1e-6)


def test_report_files_round_trip(tmp_path):
    confmat = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    names = ["sky", "road", "car"]
    write_confusion_csv(confmat, names, tmp_path / "c.csv")
    assert read_confusion_csv(tmp_path / "c.csv") == (names, pytest.approx(confmat))
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "target \\ predicted,sky,road,car"
    plot_confusion(confmat, names, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    table = format_report(
        {"val/mIoU": 0.5, "val/iou/sky": 0.25, "val/iou/car": float("nan")}, names, "val", confmat
    )
    assert "mean IoU" in table and "0.5000" in table and "n/a" in table
    assert [
        line.split()[-1] for line in table.splitlines() if line.startswith(("sky", "road"))
    ] == ["6", "9"]


@pytest.mark.slow
def test_cli_evaluate_writes_report(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py", f"ckpt_path={ckpt}", "data=folder", f"data.root={root}", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics.json", "confusion.csv", "confusion.png", "run_info.json"):
        assert (out / name).is_file(), name
    assert "mean class accuracy" in result.stdout and "test/fw_iou" in result.stdout


def test_evaluate_missing_split_is_a_clear_error(setup, compose_cfg):
    root, ckpt = setup
    with pytest.raises(DataError, match="no folder .*images/train"):
        evaluate(eval_cfg(compose_cfg, ckpt, root, "split=train"))


@pytest.mark.parametrize(
    ("data", "split", "expected"),
    [
        ("voc", "test", "val"),  # VOC's test labels are not public: the test role reads val
        ("coco", "val", "val2017"),
        ("coco", "train", "train2017"),
        ("shapes", "test", "test"),
        ("voc", "train_aug", "train_aug"),  # not a role: the dataset's own split name
    ],
)
def test_split_roles_go_through_the_data_config(compose_cfg, data, split, expected):
    from segexp.infer.checkpoint_data import split_name

    cfg = compose_cfg([f"data={data}", "data.root=/nowhere"] if data != "shapes" else [])
    assert split_name(cfg.data, split) == expected


@pytest.mark.slow
def test_cli_evaluate_refuses_other_classes(tmp_path, compose_cfg):
    """A 6-class checkpoint on a dataset whose classes.txt has 3 names: exit 2, both lists named."""
    root = write_folder_dataset(tmp_path / "folder", labels=(0, 1, 2))
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    ckpt = write_checkpoint(tmp_path / "ckpt" / "six.ckpt", compose_cfg, num_classes=6)
    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py", f"ckpt_path={ckpt}", "data=folder", f"data.root={root}", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "['c0', 'c1', 'c2', 'c3', 'c4', 'c5']" in line and "['sky', 'road', 'car']" in line
    assert not (out / "metrics.json").exists()


def test_evaluate_refuses_same_number_of_other_names(tmp_path, compose_cfg):
    from segexp.data.classes import ClassesError

    root = write_folder_dataset(tmp_path / "folder", labels=(0, 1, 2))
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    ckpt = write_checkpoint(tmp_path / "ckpt" / "three.ckpt", compose_cfg, num_classes=3)
    with pytest.raises(ClassesError, match=r"\['c0', 'c1', 'c2'\].*\['sky', 'road', 'car'\]"):
        evaluate(eval_cfg(compose_cfg, ckpt, root))
    (root / "classes.txt").write_text("c0\nc1\nc2\n")  # the checkpoint's names: evaluated
    assert "test/mIoU" in evaluate(eval_cfg(compose_cfg, ckpt, root))
