"""segexp.infer.analysis: per-image scores, confused pairs, Boundary IoU and object sizes on
hand-made masks whose every figure is known (or computed here another way)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from segexp.errors import UserError
from segexp.infer.analysis import Analysis, boundary_band, boundary_pixels, object_classes

IGNORE = 255


def disc(size: int, radius: float, centre=None) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    cy, cx = centre or ((size - 1) / 2, (size - 1) / 2)
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def ring(size: int, outer: float, inner: float) -> np.ndarray:
    return disc(size, outer) & ~disc(size, inner)


def reference_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Cheng et al.'s reference: the mask minus its erosion by a 3 x 3 square, ``width``
    times, the image padded with background (here with scipy instead of cv2)."""
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, np.ones((3, 3)), iterations=width)[1:-1, 1:-1]
    return mask & ~eroded


def numpy_iou(pred: np.ndarray, target: np.ndarray, cls: int) -> float:
    keep = target != IGNORE
    p, t = (pred == cls) & keep, (target == cls) & keep
    return (p & t).sum() / (p | t).sum()


def test_boundary_band_is_the_erosion_reference():
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((60, 80)), 3) > 0.5  # blobs, some at the border
    assert blobs[0].any() and 0.2 < blobs.mean() < 0.8
    for width in (1, 3, 7):
        np.testing.assert_array_equal(boundary_band(blobs, width), reference_band(blobs, width))
    assert boundary_pixels(300, 400, 0.02) == 10 and boundary_pixels(10, 10, 0.02) == 1


def test_ring_off_by_one_pixel_drops_boundary_iou_not_miou():
    size = 256
    target = ring(size, 100, 60).astype(np.uint8)
    pred = ring(size, 101, 61).astype(np.uint8)  # both contours one pixel further out
    analysis = Analysis(["background", "ring"], IGNORE)
    perfect = Analysis(["background", "ring"], IGNORE)
    row = analysis.add(pred, target, "ring")
    perfect.add(target, target, "ring")

    width = boundary_pixels(size, size, 0.02)
    assert width == 7
    expected = []
    for cls in (0, 1):
        truth, guess = reference_band(target == cls, width), reference_band(pred == cls, width)
        expected.append((truth & guess).sum() / (truth | guess).sum())
    per_class, mean = analysis.boundary_iou()
    np.testing.assert_allclose(per_class, expected)
    miou = np.mean([numpy_iou(pred, target, c) for c in (0, 1)])
    assert row["mIoU"] == pytest.approx(miou)
    assert row["boundary_mIoU"] == pytest.approx(mean)
    # The point of the measure: mIoU barely moves, Boundary IoU drops clearly.
    assert perfect.boundary_iou()[1] == 1.0 and perfect.rows[0]["mIoU"] == 1.0
    assert numpy_iou(pred, target, 1) > 0.95 and per_class[1] < 0.85  # ring: 0.95 vs 0.80
    assert 1 - mean > 4 * (1 - miou)  # the mean drops over 4 times as much as mIoU


def test_swapped_classes_top_the_confused_pairs():
    rng = np.random.default_rng(1)
    names = ["bg", "cat", "dog", "car"]
    analysis = Analysis(names, IGNORE, worst_k=2)
    targets, preds = [], []
    for index in range(3):
        target = rng.integers(0, 4, (32, 32)).astype(np.uint8)
        target[:2] = IGNORE
        pred = target.copy()
        pred[5, :3] = 3  # a few scattered errors (into car) on every image
        pred[pred == IGNORE] = 0
        if index == 1:  # cat and dog swapped on one image
            pred = np.where(target == 1, 2, np.where(target == 2, 1, pred)).astype(np.uint8)
        targets.append(target)
        preds.append(pred)
        analysis.add(pred, target, f"img{index}", f"/data/img{index}.png")
    confmat = np.zeros((4, 4), np.int64)
    for pred, target in zip(preds, targets):
        keep = target != IGNORE
        np.add.at(confmat, (target[keep], pred[keep]), 1)
    np.testing.assert_array_equal(analysis.confmat, confmat)

    pairs = analysis.pairs(top=4)
    swapped = (targets[1] == 1).sum(), (targets[1] == 2).sum()
    assert {(p["true"], p["predicted"]) for p in pairs[:2]} == {("cat", "dog"), ("dog", "cat")}
    by_pair = {(p["true"], p["predicted"]): p for p in pairs}
    assert by_pair["cat", "dog"]["pixels"] == swapped[0]
    assert by_pair["dog", "cat"]["pixels"] == swapped[1]
    cat_total = sum((t == 1).sum() for t in targets)
    assert by_pair["cat", "dog"]["share_of_true"] == pytest.approx(swapped[0] / cat_total)
    assert pairs[0]["pixels"] >= pairs[1]["pixels"] > pairs[2]["pixels"]
    # The swap makes that image the worst one.
    assert [kept.row["name"] for kept in analysis.worst()][0] == "img1"


def test_tiny_and_large_objects_fall_in_their_buckets():
    target = np.zeros((100, 100), np.uint8)
    target[5:8, 5:8] = 1  # 9 px: 0.09 % of the image, small
    target[40:50, 10:20] = 1  # 100 px: exactly 1 %, medium (the bucket starts there)
    target[50:90, 50:90] = 2  # 1600 px: 16 %, large
    pred = np.zeros_like(target)  # the tiny square is missed
    pred[40:50, 10:15] = 1  # half of the medium one
    pred[51:90, 50:90] = 2  # the large one but its first row
    analysis = Analysis(["background", "a", "b"], IGNORE)
    assert analysis.objects == [0, 1, 2]  # a plain Analysis counts every class
    analysis = Analysis(["background", "a", "b"], IGNORE, objects=object_classes(
        ["background", "a", "b"], None))  # fmt: skip
    analysis.add(pred, target)
    table = {(r["class"], r["bucket"]): r for r in analysis.size_table()}
    assert set(table) == {
        ("all", "small"), ("all", "medium"), ("all", "large"),
        ("a", "small"), ("a", "medium"), ("b", "large"),
    }  # fmt: skip
    assert table["all", "small"] == {
        "class": "all", "bucket": "small", "objects": 1, "recall": 0.0, "pixel_recall": 0.0
    }  # fmt: skip
    assert table["all", "medium"]["recall"] == 0.5 and table["all", "medium"]["objects"] == 1
    assert table["all", "large"]["recall"] == pytest.approx(1560 / 1600)

    # In pixels, with thresholds that put the 100 px square among the large ones.
    pixels = Analysis(["background", "a", "b"], IGNORE, size_unit="pixels",
                      size_thresholds=(10, 100), objects=[1, 2])  # fmt: skip
    pixels.add(pred, target)
    table = {(r["class"], r["bucket"]): r for r in pixels.size_table() if r["class"] == "all"}
    assert table["all", "small"]["objects"] == 1 and "all", "medium" not in table
    assert table["all", "large"]["objects"] == 2
    assert table["all", "large"]["recall"] == pytest.approx((0.5 + 1560 / 1600) / 2)
    assert table["all", "large"]["pixel_recall"] == pytest.approx((50 + 1560) / 1700)
    assert pixels.bucket_ranges()["medium"] == "10 to < 100 pixels"


def test_diagonal_neighbours_are_one_object_and_ignored_pixels_none():
    target = np.full((20, 20), 0, np.uint8)
    target[2, 2] = target[3, 3] = target[4, 4] = 1  # 8-connected: one object of 3 pixels
    target[10:12, 10:12] = IGNORE
    pred = target.copy()
    pred[pred == IGNORE] = 1  # predictions on ignored pixels count nowhere
    analysis = Analysis(["background", "a"], IGNORE, objects=[1])
    row = analysis.add(pred, target)
    assert analysis.size_table() == [
        {"class": "all", "bucket": "small", "objects": 1, "recall": 1.0, "pixel_recall": 1.0},
        {"class": "a", "bucket": "small", "objects": 1, "recall": 1.0, "pixel_recall": 1.0},
    ]
    assert row["pixels"] == 400 - 4 and row["mIoU"] == 1.0 and row["pixel_acc"] == 1.0
    assert row["boundary_mIoU"] == 1.0 and analysis.boundary_iou()[1] == 1.0


def test_csv_means_match_the_split_figures(tmp_path):
    rng = np.random.default_rng(2)
    names = ["a", "b", "c"]
    analysis = Analysis(names, IGNORE, worst_k=0)
    flat_pred, flat_target, per_image = [], [], []
    for index, shape in enumerate([(20, 30), (25, 25), (16, 40), (30, 12)]):
        target = rng.integers(0, 3, shape).astype(np.uint8)
        target[rng.random(shape) < 0.1] = IGNORE
        pred = np.where(rng.random(shape) < 0.7, target, rng.integers(0, 3, shape)) % 256
        pred = np.where(target == IGNORE, 0, pred).astype(np.uint8)
        analysis.add(pred, target, f"i{index}", f"dir/i{index}.png")
        flat_pred.append(pred.ravel())
        flat_target.append(target.ravel())
        keep = target != IGNORE
        per_image.append((pred[keep] == target[keep]).mean())
    analysis.write_csv(tmp_path / "per_image.csv")
    with (tmp_path / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == [f"dir/i{i}.png" for i in range(4)]
    pred, target = np.concatenate(flat_pred), np.concatenate(flat_target)
    keep = target != IGNORE
    # Pooled over the split, the CSV's counts give the dataset's pixel accuracy exactly ...
    pooled = sum(int(r["correct"]) for r in rows) / sum(int(r["pixels"]) for r in rows)
    assert pooled == pytest.approx((pred[keep] == target[keep]).mean(), abs=1e-15)
    # ... and each image's own accuracy and IoUs are the image's.
    assert [float(r["pixel_acc"]) for r in rows] == pytest.approx(per_image)
    assert float(rows[0]["iou/b"]) == pytest.approx(
        numpy_iou(flat_pred[0].reshape(20, 30), flat_target[0].reshape(20, 30), 1)
    )
    # With no ignored pixels and images of one size, the mean of per-image accuracies is the
    # split's pixel accuracy; the mean of per-image mIoU is not the split's mIoU.
    even = Analysis(names, IGNORE, worst_k=0)
    for seed in range(3):
        t = np.random.default_rng(seed).integers(0, 3, (10, 10)).astype(np.uint8)
        even.add((t + (np.arange(100).reshape(10, 10) % (seed + 2) == 0)) % 3, t)
    accuracy = np.trace(even.confmat) / even.confmat.sum()
    assert np.mean([r["pixel_acc"] for r in even.rows]) == pytest.approx(accuracy)
    assert even.summary()["pixel_acc"] == pytest.approx(accuracy)


def test_worst_images_kept_in_a_bounded_heap():
    calls = []
    analysis = Analysis(["a", "b"], IGNORE, worst_k=2)
    scores = [0.2, 0.1, 0.9, 0.2, 0.6]  # wanted: 0.1 (image 1), then 0.2 (image 0, the earlier)
    for index, score in enumerate(scores):
        target = np.zeros((10, 10), np.uint8)
        target[:, 5:] = 1
        pred = target.copy()
        # IoU of class b = right / (50 + wrong); pick the wrong count giving ``score``-ish mIoU
        wrong = int(round(50 * (1 - score)))
        pred.ravel()[np.flatnonzero(target.ravel() == 1)[:wrong]] = 0
        analysis.add(pred, target, f"i{index}", image=lambda i=index: calls.append(i) or
                     np.full((10, 10, 3), i, np.uint8))  # fmt: skip
    mious = [row["mIoU"] for row in analysis.rows]
    order = sorted(range(len(scores)), key=lambda i: (mious[i], i))[:2]
    assert [kept.row["index"] for kept in analysis.worst()] == order == [1, 0]
    assert analysis.worst()[0].image[0, 0, 0] == 1
    assert calls == [0, 1]  # pictures made only for images that enter (3 ties, but later)


def test_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(6):
        target = rng.integers(0, 3, (12, 14)).astype(np.uint8)
        pairs.append((np.where(rng.random(target.shape) < 0.6, target, 1), target))
    one = Analysis(["a", "b", "c"], IGNORE, worst_k=3)
    first, second = (Analysis(["a", "b", "c"], IGNORE, worst_k=3) for _ in range(2))
    for index, (pred, target) in enumerate(pairs):
        one.add(pred, target, f"i{index}")
        (first if index < 3 else second).add(pred, target, f"i{index}")
    first.merge(second)
    np.testing.assert_array_equal(first.confmat, one.confmat)
    np.testing.assert_array_equal(first.boundary, one.boundary)
    np.testing.assert_array_equal(first.sizes, one.sizes)
    assert [r["name"] for r in first.rows] == [r["name"] for r in one.rows]
    assert [r["index"] for r in first.rows] == list(range(6))
    assert [k.row["name"] for k in first.worst()] == [k.row["name"] for k in one.worst()]


def test_rows_read_back_across_blocks(monkeypatch):
    from segexp.infer.analysis import RowTable

    monkeypatch.setattr(RowTable, "CHUNK", 2)  # five rows span three blocks
    rng = np.random.default_rng(4)
    analysis = Analysis(["a", "b", "c"], IGNORE)
    returned = []
    for index in range(5):
        target = rng.integers(0, 3, (6, 7 + index)).astype(np.uint8)
        returned.append(analysis.add(np.roll(target, index, 1), target, f"n{index}", f"p/{index}"))
    assert len(analysis.rows) == 5 and len(analysis.rows._numbers) == 3
    for row, expected in zip(analysis.rows, returned):
        np.testing.assert_array_equal(row.pop("iou"), expected.pop("iou"))
        assert row == expected
    assert analysis.rows[4]["width"] == 11 and analysis.rows[3]["path"] == "p/3"
    with pytest.raises(IndexError):
        analysis.rows[5]


def test_settings_are_checked():
    with pytest.raises(UserError, match="size_thresholds"):
        Analysis(["a"], size_thresholds=(0.1, 0.01))
    with pytest.raises(UserError, match="size_unit"):
        Analysis(["a"], size_unit="percent")
    with pytest.raises(UserError, match="boundary_width"):
        Analysis(["a"], boundary_width=2)
    with pytest.raises(UserError, match="'sky' is not a class"):
        object_classes(["background", "car"], ["sky"])
    assert object_classes(["background", "car"], None) == [1]
    assert object_classes(["road", "car"], None) == [0, 1]
    assert object_classes(["road", "car"], [0]) == [1]
    assert math.isnan(Analysis(["a"]).boundary_iou()[1])
