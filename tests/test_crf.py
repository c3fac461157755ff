"""DenseCRF: cleans noisy probabilities along image edges; the postprocess/ config builds it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF


def two_regions(seed: int, height: int = 32, width: int = 48):
    """A dark left half and a bright right half; probabilities right on average but noisy."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :] = 200
    truth = np.broadcast_to(np.arange(width) >= width // 2, (height, width))
    p_right = np.clip(np.where(truth, 0.7, 0.3) + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    probs = np.stack([1 - p_right, p_right]).astype(np.float32)  # (2, H, W)
    return image, probs, truth


@pytest.fixture
def crf():
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra is not installed")
    return instantiate(OmegaConf.load(CONF / "postprocess" / "crf.yaml"))


@pytest.mark.parametrize("seed", [0, 1])
def test_crf_cleans_noisy_probabilities(crf, seed):
    image, probs, truth = two_regions(seed)
    image.setflags(write=False)  # as decoded images often are
    probs.setflags(write=False)
    before = (probs.argmax(0) == truth).mean()
    refined = crf(image, probs)
    after = (refined.argmax(0) == truth).mean()
    assert before < 0.9  # the noise really flips pixels
    assert after > 0.98 and after > before
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)  # still a distribution per pixel


def test_crf_checks_its_inputs(crf):
    image, probs, _ = two_regions(0)
    with pytest.raises(ValueError, match="must be \\(H, W, 3\\)"):
        crf(image[:10], probs)
    with pytest.raises(ValueError, match="uint8"):
        crf(image.astype(np.float32), probs)


def test_missing_extra_names_the_install_command(monkeypatch):
    from segexp.infer.postprocess import DenseCRF

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import now fails
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[crf\]"):
        DenseCRF()
