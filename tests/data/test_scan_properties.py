"""Property tests of the mask scanner (segexp.data.scan) on any mask hypothesis draws:
labels in and out of range, the ignore value, negative and 16-bit values, any shape."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segexp.data.scan import LabelCounts, bad_labels, check_arrays, label_histogram

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64])


@st.composite
def masks(draw, min_side: int = 0):
    """A 2-D mask of a random dtype, its values mostly small class ids."""
    dtype = np.dtype(draw(DTYPES))
    info = np.iinfo(dtype)
    values = st.one_of(
        st.integers(0, 6),
        st.sampled_from([255]),
        st.integers(max(info.min, -70000), min(info.max, 70000)),
    )
    shape = draw(st.tuples(st.integers(min_side, 7), st.integers(min_side, 7)))
    return draw(hnp.arrays(dtype, shape, elements=values))


def counted(mask: np.ndarray) -> Counter:
    return Counter(int(v) for v in mask.ravel())


@settings(max_examples=150)
@given(masks())
def test_histogram_counts_every_value(mask):
    assert label_histogram(mask) == dict(counted(mask))


@settings(max_examples=150)
@given(masks(), st.integers(1, 8), st.sampled_from([255, 0, 3, 65535, -1]))
def test_bad_labels_are_the_values_outside_the_classes_and_not_ignored(
    mask, num_classes, ignore_index
):
    expected = sorted(v for v in counted(mask) if not 0 <= v < num_classes and v != ignore_index)
    assert bad_labels(mask, num_classes, ignore_index) == expected
    problems = check_arrays(None, mask, "i.png", "m.png", num_classes, ignore_index)
    assert [p.kind for p in problems] == (["bad labels"] if expected else [])
    if expected:  # the message names the mask, the first ten bad labels and the fix
        message = str(problems[0])
        assert f"mask m.png contains label(s) {expected[:10]} " in message
        assert message.endswith("Fix data.num_classes, data.ignore_index, or the mask.")


@settings(max_examples=100)
@given(st.lists(masks(), max_size=5), st.integers(1, 6), st.sampled_from([255, 0, 2]))
def test_label_counts_over_many_masks(mask_list, num_classes, ignore_index):
    """Per class: its pixels, and the pixels of the masks that hold it; the ignored pixels;
    every value found; masks outside the classes counted in ``values`` only."""
    stats = LabelCounts(num_classes, ignore_index)
    for mask in mask_list:
        assert stats.add(mask) == dict(counted(mask))
    counts = [sum(int((m == c).sum()) for m in mask_list) for c in range(num_classes)]
    holding = [sum(m.size for m in mask_list if (m == c).any()) for c in range(num_classes)]
    if 0 <= ignore_index < num_classes:  # an ignore value that is also a class id is ignored
        counts[ignore_index] = holding[ignore_index] = 0
    assert stats.counts.tolist() == counts and stats.image_pixels.tolist() == holding
    for array in (stats.counts, stats.image_pixels):  # whole pixels (printed, written to JSON)
        assert np.issubdtype(array.dtype, np.integer)
    assert stats.ignored == sum(int((m == ignore_index).sum()) for m in mask_list)
    assert stats.values == dict(sum((counted(m) for m in mask_list), Counter()))
    assert stats.masks == len(mask_list)


@settings(max_examples=100)
@given(
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.sampled_from([(), (1,), (3,), (4,), (2,)]),
)
def test_check_arrays_reports_shape_problems(image_hw, mask_hw, channels):
    """A mask with 3 or 4 channels is an RGB(A) mask and nothing else is checked; one with
    another extra axis is unreadable; a 2-D mask of another size than its image mismatches."""
    image = np.zeros((*image_hw, 3), np.uint8)
    mask = np.zeros((*mask_hw, *channels), np.uint8)
    problems = check_arrays(image, mask, "i.png", "m.png", 2, 255)
    kinds, messages = [p.kind for p in problems], [str(p) for p in problems]
    # Each message states what was found: the mode, the shape, both sizes (width x height).
    if channels in ((3,), (4,)):
        assert kinds == ["rgb mask"]
        assert f"m.png: mask is {'RGB' if channels == (3,) else 'RGBA'}, but" in messages[0]
        assert messages[0].endswith("`python -m segexp.check` prints a one-line converter.")
    elif channels:
        assert kinds == ["unreadable mask"] and f"mask has shape {mask.shape}," in messages[0]
    elif image_hw == mask_hw:
        assert kinds == []
    else:
        (height, width), (mask_h, mask_w) = image_hw, mask_hw
        assert kinds == ["size mismatch"]
        assert f"i.png is {width}x{height} but its mask m.png is {mask_w}x{mask_h} " in messages[0]
        assert messages[0].endswith("Re-export the mask at the image's size.")


@settings(max_examples=50)
@given(st.lists(masks(), max_size=4))
def test_label_counts_without_classes_only_collects_values(mask_list):
    """With no class count (a dataset without classes.txt), nothing is per class: every value
    is collected for the check to report."""
    stats = LabelCounts(None)
    for mask in mask_list:
        stats.add(mask)
    assert stats.counts.tolist() == [] and stats.image_pixels.tolist() == []
    assert stats.values == dict(sum((counted(m) for m in mask_list), Counter()))


def test_problem_messages_word_for_word():
    """A mask with twelve bad labels names the first ten and the valid range; an RGB mask's
    message says what masks hold and where the converter is."""
    mask = np.arange(3, 15, dtype=np.uint8).reshape(3, 4)
    (problem,) = check_arrays(None, mask, "i.png", "m.png", 3, 255)
    assert problem.message == (
        "data.num_classes=3 but mask m.png contains label(s) [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] "
        "(valid: 0..2 or ignore_index=255). Fix data.num_classes, data.ignore_index, or the mask."
    )
    (problem,) = check_arrays(None, np.zeros((2, 2, 3), np.uint8), "i.png", "m.png", 3, 255)
    assert problem.message == (
        "m.png: mask is RGB, but masks must hold one class id per pixel (mode L, P or I;16). "
        "Convert colour-coded masks to class ids (a palette PNG keeps the colours for viewing); "
        "`python -m segexp.check` prints a one-line converter."
    )
