"""segexp.check: a clean dataset passes; every defect planted in a broken copy is reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from segexp.cli.argv import translate_check_flags
from segexp.data.check import check, compose
from tests import fixtures_data as fixtures
from tests.conftest import run_script


def main(argv: list[str]) -> int:
    """``segexp check`` in this process: the exit code (``--json FILE`` accepted)."""
    return check(compose(translate_check_flags(argv)))


@pytest.fixture
def clean(tmp_path):
    root = tmp_path / "clean"
    expected = fixtures.make_folder(root, counts={"train": 6, "val": 3, "test": 2})
    return root, expected


def plant_defects(root):
    """Break a copy in every way the checker must catch; returns {what: text the report must hold}."""
    train, val = root / "images" / "train", root / "masks" / "train"
    (train / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # unreadable image
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(val / "001.png")  # size mismatch
    (val / "002.png").unlink()  # missing mask
    bad = np.zeros(fixtures.SIZE, np.uint8)
    bad[0, 0], bad[1, 1] = 7, 9
    Image.fromarray(bad).save(root / "masks" / "val" / "000.png")  # labels >= num_classes
    Image.fromarray(np.zeros((*fixtures.SIZE, 3), np.uint8)).save(
        root / "masks" / "val" / "001.png"
    )  # RGB mask
    (val / "003.png").write_bytes(b"truncated")  # unreadable mask
    for path in (root / "images" / "test").iterdir():  # empty split
        path.unlink()
    return {
        "unreadable image": "images/train/000.png: cannot read image",
        "size mismatch": "but its mask",
        "missing mask": "images/train/002.png: no mask",
        "bad labels": "masks/val/000.png contains label(s) [7, 9]",
        "rgb mask": "masks/val/001.png: mask is RGB",
        "unreadable mask": "masks/train/003.png: cannot read mask",
        "empty split": "split 'test' (data.test_split) is empty",
    }


def test_clean_dataset_passes_with_true_frequencies(clean, tmp_path, capsys):
    root, expected = clean
    report_path = tmp_path / "report.json"
    code = main(
        ["data=folder", f"data.root={root}", "data.num_classes=3", "--json", str(report_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 error(s)" in out and "split train: 6 samples" in out
    report = json.loads(report_path.read_text())
    truth = np.bincount(
        np.concatenate([m.ravel() for m in expected["train"].values()]), minlength=3
    )
    assert report["counts"]["train"] == truth.tolist()
    assert report["class_names"] == ["c0", "c1", "c2"]
    # Median frequency balancing, computed here from the masks themselves.
    masks = list(expected["train"].values())
    freq = [truth[c] / sum(m.size for m in masks if (m == c).any()) for c in range(3)]
    np.testing.assert_allclose(report["weights"], np.median(freq) / np.array(freq), rtol=1e-4)


@pytest.mark.slow
def test_every_planted_defect_is_reported_and_exit_is_nonzero(clean, tmp_path):
    root, _ = clean
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    planted = plant_defects(broken)
    result = run_script(
        "-m",
        "segexp.check",
        "data=folder",
        f"data.root={broken}",
        f"hydra.run.dir={tmp_path / 'h'}",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stdout.split("ERRORS")[1]
    missing = {what: text for what, text in planted.items() if text not in errors}
    assert not missing, f"not reported: {missing}\n{result.stdout}"
    assert f"{len(planted)} error(s)" in result.stdout  # each defect once, nothing invented
    hints = result.stdout.split("HOW TO FIX:")[1]
    for kind in ("rgb mask (1)", "size mismatch (1)", "bad labels (1)", "missing mask (1)"):
        assert kind in hints, hints
    assert "Image.fromarray(o).save" in hints  # the palette-to-index one-liner
    assert "Traceback" not in result.stderr


def test_wrong_num_classes_and_missing_split_are_errors(clean, capsys):
    root, _ = clean
    shutil.rmtree(root / "images" / "test")
    args = ["data=folder", f"data.root={root}", "data.num_classes=4", "data.test_split=test"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"data.num_classes=4 but {root}/classes.txt defines 3 classes (c0, c1, c2)" in out
    assert "result: 2 error(s)" in out  # the disagreement once (not again as names), the split
    assert "split 'test' (data.test_split)" in out and "no folder" in out
    assert "class 3 (class_3) never appears in the train split" in out  # a warning, not an error


def test_check_reads_real_formats(tmp_path, capsys):
    fixtures.make_cityscapes(tmp_path, counts={"train": 2, "val": 2})
    victim = next((tmp_path / "gtFine" / "val").glob("*/*_labelIds.png"))
    victim.unlink()
    assert main(["data=cityscapes", f"data.root={tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert f"no mask {victim}" in out and "road" in out


def test_splits_found_and_test_on_val_notice(tmp_path, capsys):
    root = tmp_path / "d"
    fixtures.make_folder(root, counts={"train": 3, "val": 2})
    assert main(["data=folder", f"data.root={root}"]) == 0  # num_classes from classes.txt
    out = capsys.readouterr().out
    assert "splits found: train, val" in out and "num_classes=3" in out
    assert "no 'test' split" in out and "split test" not in out


def test_entry_point_help_and_cfg_and_legacy_json(clean, tmp_path):
    root, _ = clean
    report = tmp_path / "r.json"
    result = run_script("-m", "segexp.check", "data=folder", f"data.root={root}", "--cfg", "job")
    assert result.returncode == 0 and "task_name: check" in result.stdout, result.stderr
    result = run_script("-m", "segexp.check", "--help")
    assert result.returncode == 0 and "data" in result.stdout, result.stderr
    result = run_script(
        "-m", "segexp.check", "data=folder", f"data.root={root}", "--json", str(report),
        f"hydra.run.dir={tmp_path / 'h'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(report.read_text())["splits"] == {"train": 6, "val": 3, "test": 2}


def save_rotated_photo(path, displayed: np.ndarray) -> np.ndarray:
    """Save ``displayed`` as a phone does: pixels stored unrotated, EXIF Orientation=6 (the
    viewer turns them 90 degrees clockwise). Returns the stored pixels."""
    stored = np.rot90(displayed, k=1).copy()  # undo a clockwise turn: counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif)
    return stored


def test_exif_orientation_is_applied_and_reported(clean, tmp_path, capsys):
    """Issue 29: a phone photo with Orientation=6 loaded unrotated against a mask drawn on
    the displayed image, and the check reported nothing."""
    from segexp.data.datasets.base import read_image

    root, _ = clean
    image_path = root / "images" / "train" / "000.png"
    mask = np.array(Image.open(root / "masks" / "train" / "000.png"))
    rng = np.random.default_rng(3)
    displayed = rng.integers(0, 256, size=(*mask.shape, 3), dtype=np.uint8)
    stored = save_rotated_photo(image_path, displayed)
    assert stored.shape[:2] != displayed.shape[:2]  # the test needs a non-square image
    np.testing.assert_array_equal(read_image(image_path), displayed)
    report_path = tmp_path / "report.json"
    code = main(
        ["data=folder", f"data.root={root}", "data.num_classes=3", "--json", str(report_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert not report["errors"], report["errors"]
    warning = " ".join(report["warnings"])
    assert "images/train/000.png (Orientation=6)" in warning and "applies it" in warning
