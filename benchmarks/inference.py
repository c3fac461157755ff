"""Figure 5: inference images/s (whole image, sliding window, flip TTA) and peak memory.

Measured with segexp.infer.engine.Inference, the engine evaluate.py and predict.py use:
the whole image; overlapping windows of the training size (logits averaged); and
the `inference=tta` config (softmax averaged over horizontal flip x 3 scales).

Peak RSS comes from GNU time (``/usr/bin/time -f %M``) on a fresh process per measurement (the largest of
the process and its children, e.g. loader workers): training runs a few steps of
the default recipe through train.py, inference a sliding-window + TTA prediction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from benchmarks.harness import REPO, Figure, Settings, best, interleaved, python
from segexp.model.module import build_module


def engines(train_size: int) -> dict[str, object]:
    """segexp.infer.engine.Inference as evaluate.py / predict.py configure it: the whole image;
    windows of the training size with 1/3 overlap (the default stride, 2/3 of the window);
    conf/inference/tta.yaml (horizontal flip x scales 0.75, 1, 1.25)."""
    from segexp.infer.engine import Inference

    return {
        "whole": Inference("whole"),
        "slide": Inference("slide", crop_size=train_size),
        "tta": Inference("whole", hflip=True, scales=[0.75, 1.0, 1.25]),
    }


def images_per_second(engine, net, images: torch.Tensor, repeats: int) -> float:
    def measure() -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            engine.probs(net, images)
        return time.perf_counter() - began

    seconds = best(interleaved({"x": measure}, repeats, warmup=True)["x"])
    return len(images) / seconds


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory (MB) of a fresh process (the largest of it and its children).

    Launched through GNU time: a child forked straight from this (large) process reports
    at least our own RSS in wait4's ru_maxrss (Linux keeps the pre-exec high-water mark).
    """
    import tempfile

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:3])} exited {result.returncode}: {result.stderr[-800:]}"
            )
        return int(report.read().split()[-1]) / 1024  # GNU time's %M is in kB


def rss_probe(overrides: list[str], size: int, window: int) -> None:
    """Entry point of the inference-RSS process: one sliding-window + TTA prediction."""
    from benchmarks.harness import Settings

    settings = Settings(quick=False)
    cfg = settings.compose(overrides)
    net = build_module(cfg).eval()
    images = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for name in ("slide", "tta"):
            engines(window)[name].probs(net, images)


def run(settings: Settings) -> list[Figure]:
    cfg = settings.compose()
    train_size = int(cfg.data.generate.image_size)
    size, batch, repeats = (train_size * 2, 2, 1) if settings.quick else (train_size * 2, 4, 3)
    net = build_module(cfg).eval()
    images = torch.randn(batch, 3, size, size)
    engine = engines(train_size)
    figures = [
        Figure(
            f"whole image, {size}px",
            images_per_second(engine["whole"], net, images, repeats),
            "img/s",
            note=f"batch {batch}, segexp.infer.engine",
        ),
        Figure(
            f"sliding window {train_size}px, 1/3 overlap",
            images_per_second(engine["slide"], net, images, repeats),
            "img/s",
        ),
        Figure(
            "TTA: hflip x scales 0.75/1/1.25 (6 passes)",
            images_per_second(engine["tta"], net, images, repeats),
            "img/s",
        ),
    ]
    overrides = settings.overrides()
    steps = 3 if settings.quick else 10
    run_dir = settings.out_dir / "rss-train"
    train_rss = peak_rss_mb(
        [
            python(),
            "train.py",
            *overrides,
            f"hydra.run.dir={run_dir}",
            "test=false",
            f"++trainer.max_steps={steps}",
            "++trainer.limit_val_batches=0",
        ]
    )
    figures.append(Figure(f"peak RSS, training ({steps} steps of train.py)", train_rss, "MB"))
    probe = (
        f"from benchmarks.inference import rss_probe; "
        f"rss_probe({overrides!r}, {size}, {train_size})"
    )
    infer_rss = peak_rss_mb([sys.executable, "-c", probe])
    figures.append(Figure(f"peak RSS, inference (sliding + TTA, {size}px)", infer_rss, "MB"))
    return figures
