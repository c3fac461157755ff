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


def test_widths_scale_with_the_image(crf):
    from segexp.infer.postprocess import DenseCRF

    assert crf.relative_widths  # postprocess/crf.yaml: fractions of the shorter side
    assert crf.widths(100, 300) == pytest.approx((crf.bilateral_sxy * 100, crf.gaussian_sxy * 100))
    assert crf.widths(400, 200) == pytest.approx((crf.bilateral_sxy * 200, crf.gaussian_sxy * 200))
    pixels = DenseCRF(bilateral_sxy=80.0, gaussian_sxy=3.0, relative_widths=False)
    assert pixels.widths(100, 300) == pixels.widths(1000, 3000) == (80.0, 3.0)
    # Same image at twice the size: relative widths keep the result (up to resampling).
    image, probs, truth = two_regions(0)
    big_image = image.repeat(2, 0).repeat(2, 1)
    big_probs = probs.repeat(2, 1).repeat(2, 2)
    small = crf(image, probs).argmax(0)
    big = crf(big_image, big_probs).argmax(0)[::2, ::2]
    assert (small == truth).mean() > 0.98 and (big == truth).mean() > 0.98


def test_params_file_overrides_and_disables(tmp_path, crf):
    from segexp.infer.postprocess import write_params

    path = write_params(tmp_path / "p.yaml", {"bilateral_weight": 2.5, "iterations": 3}, "hi")
    cfg = OmegaConf.load(CONF / "postprocess" / "crf.yaml")
    loaded = instantiate(cfg, params=str(path))
    assert loaded.bilateral_weight == 2.5 and loaded.iterations == 3
    assert loaded.bilateral_sxy == cfg.bilateral_sxy  # keys not in the file: the config's
    off = instantiate(cfg, params=str(write_params(tmp_path / "off.yaml", {"enabled": False})))
    image, probs, _ = two_regions(0)
    np.testing.assert_array_equal(off(image, probs), probs)


def test_bad_params_file_names_it(tmp_path, crf):
    from segexp.errors import UserError
    from segexp.infer.postprocess import DenseCRF

    with pytest.raises(UserError, match="postprocess.params=.*no such file"):
        DenseCRF(params=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("bilateral_wieght: 3\n")
    with pytest.raises(UserError, match=r"unknown keys \['bilateral_wieght'\]"):
        DenseCRF(params=tmp_path / "bad.yaml")


def synthetic_samples(seeds, noise: float):
    from segexp.infer.tune_crf import Sample

    samples = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        image, probs, truth = two_regions(seed)
        p_right = np.clip(np.where(truth, 0.7, 0.3) + rng.normal(0, noise, truth.shape), 0.01, 0.99)
        probs = np.stack([1 - p_right, p_right]).astype(np.float32)
        mask = truth.astype(np.uint8)
        mask[:2] = 255  # ignored
        samples.append(Sample(image, probs, mask))
    return samples


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_tuner_never_worse_than_no_crf(tmp_path, crf, noise):
    from segexp.infer.postprocess import DenseCRF, write_params
    from segexp.infer.tune_crf import NO_CRF, score, settings_grid, tune

    samples = synthetic_samples([0, 1], noise)
    base = OmegaConf.to_container(OmegaConf.load(CONF / "postprocess" / "crf.yaml"))
    base = {k: v for k, v in base.items() if k in DenseCRF.SETTINGS}  # as tune_crf takes them
    settings = settings_grid(
        base, {"bilateral_weight": [3.0, 10.0]}, [{"bilateral_weight": 0.1, "gaussian_weight": 0.1}]
    )
    assert settings[0] == NO_CRF and len(settings) == 4
    best, best_miou, results = tune(samples, settings, 2, 255, echo=lambda line: None)
    no_crf = results[0][1]
    assert best_miou >= no_crf and best_miou == max(miou for _, miou in results)
    if noise == 0.0:  # already perfect: a tie, which goes to no CRF
        assert no_crf == 1.0 and best == NO_CRF
    else:
        assert best["enabled"] and best_miou > no_crf
    # The written file loads through postprocess.params and gives the same score.
    path = write_params(tmp_path / "crf_params.yaml", best)
    loaded = instantiate(OmegaConf.load(CONF / "postprocess" / "crf.yaml"), params=str(path))
    assert loaded.enabled == best["enabled"]
    assert score(samples, loaded.settings(), 2, 255) == pytest.approx(best_miou)


def test_cli_tune_crf_writes_params(tmp_path, compose_cfg):
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra is not installed")
    import torch
    from PIL import Image

    from segexp.run.checkpoint import load_module
    from tests.conftest import run_script
    from tests.model.test_metrics import numpy_reference
    from tests.tiny_checkpoint import normalise, write_checkpoint, write_folder_dataset

    root = write_folder_dataset(tmp_path / "folder", num_images=2, size=(32, 40))
    ckpt = write_checkpoint(tmp_path / "ckpt" / "tiny.ckpt", compose_cfg, num_classes=3)
    out = tmp_path / "tune"
    result = run_script(
        "-m", "segexp.tune_crf", f"ckpt_path={ckpt}", "data=folder", f"data.root={root}",
        "data.num_workers=0", "grid.bilateral_sxy=[0.1]", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Every setting's line ("mIoU 0.1234  <setting>"), no CRF first, then the chosen one.
    printed = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("mIoU")]
    assert printed[0][1:] == ["no", "CRF"] and len(printed) > 2
    scores = [float(words[0]) for words in printed]
    best = float(result.stdout.split("best: mIoU ")[1].split()[0])
    assert best == max(scores) and best >= scores[0]
    # Independently: the network's probabilities on each val image, scored in numpy without
    # a CRF and with the settings written to crf_params.yaml.
    loaded = instantiate(
        OmegaConf.load(CONF / "postprocess" / "crf.yaml"), params=str(out / "crf_params.yaml")
    )
    module = load_module(ckpt).eval()
    preds, refined, targets = [], [], []
    for image_path in sorted((root / "images" / "val").glob("*.png")):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        with torch.no_grad():
            logits = module(normalise(image, module.hparams.mean, module.hparams.std))[0]
        probs = logits.softmax(0).numpy()
        preds.append(probs.argmax(0).ravel())
        refined.append((loaded(image, probs) if loaded.enabled else probs).argmax(0).ravel())
        targets.append(np.asarray(Image.open(root / "masks" / "val" / image_path.name)).ravel())
    target = np.concatenate(targets).astype(np.int64)
    assert scores[0] == pytest.approx(
        numpy_reference(np.concatenate(preds), target, 3)["mIoU"], abs=6e-5
    )
    assert best == pytest.approx(
        numpy_reference(np.concatenate(refined), target, 3)["mIoU"], abs=6e-5
    )
