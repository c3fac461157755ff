"""segexp.track.publish: what the trackers get (W&B's class labels and per-class table rows)."""

from __future__ import annotations

import pytest
import torch

from segexp.track.publish import class_labels, per_class_rows


def test_per_class_rows_from_confusion_matrix() -> None:
    # rows: target, columns: prediction. class 2 never occurs: no IoU, no accuracy.
    confmat = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    rows = per_class_rows(confmat, ["bg", "fg", "never"])
    assert rows[0] == ["bg", pytest.approx(8 / 11), pytest.approx(8 / 10), 10, 9]
    assert rows[1] == ["fg", pytest.approx(3 / 6), pytest.approx(3 / 4), 4, 5]
    assert rows[2] == ["never", None, None, 0, 0]


def test_class_labels_name_ignore() -> None:
    assert class_labels(["bg", "cat"], 255) == {0: "bg", 1: "cat", 255: "ignore"}
    assert class_labels(["bg", "cat"], None) == {0: "bg", 1: "cat"}
