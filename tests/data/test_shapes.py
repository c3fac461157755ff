"""The generated shapes dataset: deterministic, cached, in the folder layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segexp.data.shapes import CLASS_NAMES, draw_scene, generate_shapes


def test_scene_is_deterministic_and_seed_dependent():
    image_a, mask_a = draw_scene(5, 64)
    image_b, mask_b = draw_scene(5, 64)
    image_c, _ = draw_scene(6, 64)
    assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)
    assert image_a.shape == (64, 64, 3) and image_a.dtype == np.uint8
    assert mask_a.shape == (64, 64) and mask_a.max() < len(CLASS_NAMES)


def test_generate_writes_folder_layout_and_caches(tmp_path):
    root = tmp_path / "shapes"
    generate_shapes(root, num_train=5, num_val=2, num_test=3, image_size=32, seed=1)
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        assert len(list((root / "images" / split).glob("*.png"))) == count
        assert len(list((root / "masks" / split).glob("*.png"))) == count
    assert (root / "classes.txt").read_text().split() == list(CLASS_NAMES)
    mask = np.asarray(Image.open(root / "masks" / "train" / "00000.png"))
    assert mask.ndim == 2

    stamp = (root / "shapes.json").stat().st_mtime_ns
    generate_shapes(root, num_train=5, num_val=2, num_test=3, image_size=32, seed=1)
    assert (root / "shapes.json").stat().st_mtime_ns == stamp  # cached: not rewritten

    generate_shapes(root, num_train=4, num_val=2, num_test=3, image_size=32, seed=1)
    assert len(list((root / "images" / "train").glob("*.png"))) == 4  # parameters changed
    assert json.loads((root / "shapes.json").read_text())["num_train"] == 4


def test_generate_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_shapes(tmp_path / "mine", num_train=1, num_val=1, num_test=1, image_size=32)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_every_class_appears():
    counts = np.zeros(len(CLASS_NAMES), dtype=int)
    for seed in range(40):
        _, mask = draw_scene(seed, 64)
        counts += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
    assert (counts > 0).all()
    assert counts[0] < counts.sum() * 0.95  # objects are not specks


def test_concurrent_jobs_write_the_dataset_once(tmp_path, monkeypatch):
    """Jobs of a sweep that start together: one draws the dataset, the others wait for it."""
    import threading
    import time

    from segexp.data import shapes

    calls = []
    real_write = shapes._write

    def slow_write(root, params):
        calls.append(root)
        time.sleep(0.5)  # long enough for the other jobs to arrive while this one writes
        real_write(root, params)

    monkeypatch.setattr(shapes, "_write", slow_write)
    root = tmp_path / "shapes"
    kwargs = dict(num_train=2, num_val=1, num_test=1, image_size=32, seed=3)
    errors = []

    def job():
        try:
            generate_shapes(root, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(calls) == 1
    assert len(list((root / "images" / "train").glob("*.png"))) == 2


@pytest.mark.slow
def test_default_dataset_is_not_solved_in_one_epoch(compose_cfg):
    """The embedded default must leave room between recipes: one epoch of the default recipe
    on the full default dataset is far from saturated (the issue's bar: not above 0.99)."""
    from segexp.run.lifecycle import train

    cfg = compose_cfg(
        ["trainer.max_epochs=1", "logger=csv", "trainer.enable_progress_bar=false", "test=false"],
        tiny=False,
    )
    assert cfg.data.generate.num_train >= 400  # the real default, not the tiny test data
    metrics = train(cfg)
    assert 0.0 < metrics["val/mIoU"] < 0.9, metrics["val/mIoU"]
