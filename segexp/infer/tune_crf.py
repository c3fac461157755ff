"""Choose dense CRF settings on the validation split, never worse there than no CRF.

``segexp tune-crf ckpt_path=...`` runs the network once over the split, keeps
each image's softmax probabilities, un-normalised uint8 image and mask in memory (at most
``max_images`` of them), then scores a small grid of CRF settings by mIoU: no CRF, gentle
settings that change almost nothing, and the grid from ``conf/tune_crf.yaml``. The best
wins, ties going to no CRF; it is written as a ``postprocess.params`` file:

    segexp eval ckpt_path=... postprocess=crf postprocess.params=<run>/crf_params.yaml
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from segexp.errors import UserError
from segexp.infer.analysis import confusion

NO_CRF: dict[str, Any] = {"enabled": False}


@dataclass
class Sample:
    """One validation image: uint8 (H, W, 3), float32 probabilities (C, H, W), mask (H, W)."""

    image: np.ndarray
    probs: np.ndarray
    mask: np.ndarray


def settings_grid(
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]] | None = None,
    gentle: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """No CRF first, then each ``gentle`` setting, then every combination of ``grid``,
    each over ``base`` (the CRF's other settings); duplicates are dropped."""
    keys = [key for key in (grid or {}) if key != "enabled"]
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    settings, seen = [dict(NO_CRF)], set()
    for change in [*gentle, *(combos if keys else [])]:
        setting = {**base, **change, "enabled": True}
        key = tuple(sorted(setting.items()))
        if key not in seen:
            seen.add(key)
            settings.append(setting)
    return settings


def mean_iou(confmat: np.ndarray) -> float:
    import torch

    from segexp.model.metrics import confusion_scores

    return float(confusion_scores(torch.from_numpy(confmat))["mIoU"])


def score(
    samples: Sequence[Sample], setting: Mapping[str, Any], num_classes: int, ignore_index: int
) -> float:
    """Validation mIoU of the samples' probabilities refined with ``setting``."""
    from segexp.infer.postprocess import DenseCRF

    crf = DenseCRF(**setting) if setting.get("enabled", True) else None
    total = np.zeros((num_classes, num_classes), np.int64)
    for sample in samples:
        probs = sample.probs if crf is None else crf(sample.image, sample.probs)
        total += confusion(probs.argmax(0), sample.mask, num_classes, ignore_index)
    return mean_iou(total)


def choose(results: Sequence[tuple[dict[str, Any], float]]) -> tuple[dict[str, Any], float]:
    """The best (setting, mIoU); a CRF setting must beat no CRF (the first) strictly."""
    best, best_miou = results[0]
    for setting, miou in results[1:]:
        if not math.isnan(miou) and (math.isnan(best_miou) or miou > best_miou):
            best, best_miou = setting, miou
    return best, best_miou


def tune(
    samples: Sequence[Sample],
    settings: Sequence[Mapping[str, Any]],
    num_classes: int,
    ignore_index: int,
    echo=print,
) -> tuple[dict[str, Any], float, list[tuple[dict[str, Any], float]]]:
    """Score every setting (no CRF first); return (best setting, its mIoU, all results)."""
    if not samples:
        raise UserError("tune_crf: the split has no images; choose another with split=...")
    if not settings or settings[0].get("enabled", True):
        raise ValueError("settings must start with no CRF ({'enabled': False})")
    results = []
    for setting in settings:
        miou = score(samples, setting, num_classes, ignore_index)
        results.append((dict(setting), miou))
        echo(describe(setting, miou))
    best, best_miou = choose(results)
    return best, best_miou, results


def describe(setting: Mapping[str, Any], miou: float) -> str:
    if not setting.get("enabled", True):
        return f"mIoU {miou:.4f}  no CRF"
    text = "  ".join(f"{key}={value}" for key, value in setting.items() if key != "enabled")
    return f"mIoU {miou:.4f}  {text}"


def collect(module, dataloader, inference, max_images: int | None) -> list[Sample]:
    """Run the network once over ``dataloader``: one :class:`Sample` per image."""
    import torch

    from segexp.data.viz import denormalize

    mean, std = module.hparams.mean, module.hparams.std
    samples: list[Sample] = []
    module.eval()
    with torch.no_grad():
        for batch in dataloader:
            images = batch["image"].to(module.device)
            probs = inference.probs(module, images).float().cpu().numpy()
            pixels = denormalize(images, mean, std)
            masks = batch["mask"].cpu().numpy()
            for image, prob, mask in zip(pixels, probs, masks):
                samples.append(Sample(np.ascontiguousarray(image), prob, mask))
                if max_images and len(samples) >= max_images:
                    return samples
    return samples


def tune_crf(cfg: DictConfig) -> dict[str, Any]:
    """The command: returns {"params": path, "setting": best, "mIoU": ..., "no_crf_mIoU": ...}."""
    from segexp.run.checkpoint import load_module, trusted_packages

    # The checkpoint first: a wrong path or a refused file is reported before the imports below.
    module = load_module(cfg.ckpt_path, trust=trusted_packages(cfg))
    from hydra.utils import instantiate

    from segexp.infer.checkpoint_data import checkpoint_datamodule
    from segexp.infer.postprocess import DenseCRF, write_params

    run_dir = Path(str(cfg.paths.output_dir))
    overrides = {"batch_size": int(cfg.batch_size)}
    if cfg.get("num_workers") is not None:
        overrides["num_workers"] = int(cfg.num_workers)
    datamodule = checkpoint_datamodule(cfg, module, str(cfg.split), **overrides)
    datamodule.prepare_data()
    datamodule.setup("test")
    inference = instantiate(cfg.inference, postprocess=None)

    samples = collect(module, datamodule.test_dataloader(), inference, cfg.get("max_images"))
    print(f"tune_crf: {len(samples)} {cfg.split} images from {cfg.ckpt_path}")

    crf_cfg = OmegaConf.to_container(cfg.postprocess, resolve=True)
    base = {key: crf_cfg[key] for key in DenseCRF.SETTINGS if key in crf_cfg and key != "enabled"}
    grid = OmegaConf.to_container(cfg.grid, resolve=True) if cfg.get("grid") else {}
    gentle = OmegaConf.to_container(cfg.gentle, resolve=True) if cfg.get("gentle") else []
    settings = settings_grid(base, grid, gentle)
    num_classes, ignore_index = int(module.hparams.num_classes), int(module.hparams.ignore_index)
    best, best_miou, results = tune(samples, settings, num_classes, ignore_index)

    no_crf = results[0][1]
    header = (
        f"Chosen by segexp tune-crf on {cfg.ckpt_path}, split {cfg.split} "
        f"({len(samples)} images): mIoU {best_miou:.4f}, no CRF {no_crf:.4f}.\n"
        "Use: postprocess=crf postprocess.params=<this file>"
    )
    path = write_params(run_dir / str(cfg.output), best, header)
    print(f"\nbest: {describe(best, best_miou)}  (no CRF: {no_crf:.4f})")
    print(f"wrote {path.resolve()}")
    print(f"use it: postprocess=crf postprocess.params={path.resolve()}")
    return {"params": path, "setting": best, "mIoU": best_miou, "no_crf_mIoU": no_crf}
