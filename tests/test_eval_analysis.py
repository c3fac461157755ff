"""segexp eval's analysis end to end (files, figures against numpy) and the untuned-CRF refusal."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.infer.evaluate import evaluate
from segexp.run.checkpoint import load_module
from tests.conftest import run_script
from tests.infer.test_analysis import reference_band
from tests.test_evaluate import eval_cfg
from tests.tiny_checkpoint import IGNORE, normalise, write_checkpoint, write_folder_dataset

NUM_CLASSES = 4


@pytest.fixture
def setup(tmp_path, compose_cfg):
    root = write_folder_dataset(tmp_path / "folder", num_images=4, labels=(0, 1, 2))
    # One image of another size: batches are padded, the analysis must crop them back.
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)).save(
        root / "images" / "test" / "odd.png"
    )
    mask = rng.choice(np.array([0, 1, 2, IGNORE], np.uint8), size=(33, 47))
    Image.fromarray(mask).save(root / "masks" / "test" / "odd.png")
    ckpt = write_checkpoint(tmp_path / "ckpt" / "tiny.ckpt", compose_cfg, NUM_CLASSES)
    return root, ckpt


def numpy_images(ckpt: Path, root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image path: (prediction, mask)}, each image through the network on its own."""
    module = load_module(ckpt).eval()
    out = {}
    for path in sorted((root / "images" / "test").glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        with torch.no_grad():
            logits = module(normalise(image, module.hparams.mean, module.hparams.std))[0]
        mask = np.asarray(Image.open(root / "masks" / "test" / path.name)).astype(np.int64)
        out[str(path)] = (logits.argmax(0).numpy(), mask)
    return out


def numpy_scores(pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    keep = mask != IGNORE
    scores = {"pixel_acc": float((pred[keep] == mask[keep]).mean())}
    ious = {}
    for cls in range(NUM_CLASSES):
        p, t = (pred == cls) & keep, (mask == cls) & keep
        if (p | t).any():
            ious[cls] = (p & t).sum() / (p | t).sum()
    scores["mIoU"] = float(np.mean(list(ious.values())))
    scores.update({f"iou/c{cls}": float(v) for cls, v in ious.items()})
    return scores


def band_counts(pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(2, C) boundary intersections and unions, Cheng et al.'s way (scipy erosions)."""
    keep = mask != IGNORE
    width = max(1, round(0.02 * np.hypot(*mask.shape)))
    counts = np.zeros((2, NUM_CLASSES))
    for cls in range(NUM_CLASSES):
        truth = reference_band(mask == cls, width) & keep
        guess = reference_band(pred == cls, width) & keep
        counts[:, cls] = (truth & guess).sum(), (truth | guess).sum()
    return counts


@pytest.mark.slow
def test_cli_eval_writes_the_analysis(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "eval"
    result = run_script(
        "-m", "segexp", "eval", f"ckpt_path={ckpt}", "data=folder", f"data.root={root}",
        "data.num_workers=0", "batch_size=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "analysis.worst_k=2", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = numpy_images(ckpt, root)

    with (out / "per_image.csv").open() as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(expected) and len(rows) == 5
    counts = np.zeros((2, NUM_CLASSES))
    for path, (pred, mask) in expected.items():
        row = rows[path]
        assert (int(row["height"]), int(row["width"])) == mask.shape
        for key, value in numpy_scores(pred, mask).items():
            assert float(row[key]) == pytest.approx(value, abs=1e-12), (path, key)
        counts += band_counts(pred, mask)
    assert rows[str(root / "images" / "test" / "odd.png")]["height"] == "33"

    metrics = json.loads((out / "metrics.json").read_text())
    boundary = np.divide(
        counts[0], counts[1], out=np.full(NUM_CLASSES, np.nan), where=counts[1] > 0
    )
    assert metrics["test/boundary_mIoU"] == pytest.approx(np.nanmean(boundary))
    assert metrics["test/boundary_iou/c1"] == pytest.approx(boundary[1])

    summary = json.loads((out / "analysis.json").read_text())
    lowest = sorted(expected, key=lambda p: numpy_scores(*expected[p])["mIoU"])[:2]
    assert [entry["path"] for entry in summary["worst"]] == lowest
    for entry in summary["worst"]:
        with Image.open(out / entry["file"]) as picture:
            assert picture.format == "PNG"
    with Image.open(out / "worst.png") as grid:
        assert grid.format == "PNG"
    page = (out / "analysis.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and all(Path(p).name in page for p in rows)
    assert "analysis.html" in result.stdout and "boundary mIoU" in result.stdout


def test_bad_analysis_setting_stops_before_the_model_runs(setup, compose_cfg):
    from segexp.cli.errors import user_message

    root, ckpt = setup
    cfg = eval_cfg(compose_cfg, ckpt, root, "analysis.size_thresholds=[0.5,0.1]")
    with pytest.raises(Exception) as error:  # Hydra's instantiate wraps it
        evaluate(cfg)
    assert "analysis.size_thresholds=[0.5, 0.1]" in user_message(error.value)  # exit 2
    assert not (Path(cfg.paths.output_dir) / "run_info.json").exists()  # nothing ran yet


def test_eval_without_analysis_writes_none_of_it(setup, compose_cfg):
    root, ckpt = setup
    cfg = eval_cfg(compose_cfg, ckpt, root, "analysis.enabled=false")
    metrics = evaluate(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "metrics.json").is_file()
    assert not any((run / name).exists() for name in ("per_image.csv", "analysis.html", "worst"))
    assert not any("boundary" in key for key in metrics)


# -- an untuned dense CRF ----------------------------------------------------------------------
def test_untuned_crf_is_refused_with_the_tuning_command(setup, compose_cfg, tmp_path):
    from segexp.infer.postprocess import UntunedCRFError, build_postprocess

    root, ckpt = setup
    for split, tune_on in (("test", "val"), ("val", "train")):
        cfg = eval_cfg(compose_cfg, ckpt, root, "postprocess=crf", f"split={split}")
        with pytest.raises(UntunedCRFError) as error:
            evaluate(cfg)
        message = str(error.value)
        command = f"segexp tune-crf ckpt_path={ckpt.resolve()} split={tune_on}"
        assert command in message
        out = ckpt.resolve().parent / "crf-tiny"  # beside the checkpoint (no run folder)
        assert f"hydra.run.dir={out}" in message
        assert f"postprocess.params={out / 'crf_params.yaml'}" in message
        assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()
    predict = compose_cfg(
        [f"ckpt_path={ckpt}", "input=x.png", "postprocess=crf"], config_name="predict"
    )
    with pytest.raises(UntunedCRFError, match="split=val"):
        build_postprocess(predict)
    # Not refused: no CRF, a CRF turned off, or other post-processing.
    assert build_postprocess(eval_cfg(compose_cfg, ckpt, root)) is None
    off = eval_cfg(compose_cfg, ckpt, root, "postprocess=crf", "+postprocess.enabled=false")
    assert build_postprocess(off).enabled is False


def test_tuned_or_explicitly_untuned_crf_is_built(setup, compose_cfg, tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra is not installed")
    from segexp.infer.postprocess import build_postprocess, write_params

    root, ckpt = setup
    params = write_params(tmp_path / "crf_params.yaml", {"bilateral_weight": 2.5})
    tuned = build_postprocess(
        eval_cfg(compose_cfg, ckpt, root, "postprocess=crf", f"postprocess.params={params}")
    )
    assert tuned.bilateral_weight == 2.5
    anyway = build_postprocess(
        eval_cfg(compose_cfg, ckpt, root, "postprocess=crf", "postprocess.untuned=true")
    )
    assert anyway.enabled and anyway.params is None and anyway.bilateral_weight == 10.0


@pytest.mark.slow
def test_cli_refusal_names_a_command_that_works(setup, tmp_path):
    """eval with postprocess=crf exits 2 naming one command; that command, run as printed,
    writes the params file the message names, and eval with it runs."""
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra is not installed")
    root, ckpt = setup
    args = [
        f"ckpt_path={ckpt}", "data=folder", f"data.root={root}", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "postprocess=crf",
        "analysis.enabled=false",
    ]  # fmt: skip
    refused = run_script("-m", "segexp", "eval", *args, f"hydra.run.dir={tmp_path / 'e1'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    command = shlex.split(line.split("`")[1])
    assert command[:2] == ["segexp", "tune-crf"] and f"data.root={root}" in command
    params = line.split("postprocess.params=")[1].split()[0]

    tuned = run_script("-m", "segexp", *command[1:])
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert Path(params).is_file()
    ran = run_script(
        "-m", "segexp", "eval", *args, f"postprocess.params={params}",
        f"hydra.run.dir={tmp_path / 'e2'}",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "e2" / "metrics.json").is_file()
