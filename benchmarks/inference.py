"""Figure 5: inference images/s (whole image, sliding window, flip TTA) and peak memory.

segexp.inference (predict.py's engine) lives on another branch; until it is merged
the three modes are measured with the small reference implementations below,
labelled "local" in the output. They do what such an engine does on the CPU:
one forward per image; overlapping windows of the training size averaged; the
mean of the softmax over identity + horizontal + vertical flips.

Peak RSS comes from GNU time (``/usr/bin/time -f %M``) on a fresh process per measurement (the largest of
the process and its children, e.g. loader workers): training runs a few steps of
the default recipe through train.py, inference a sliding-window + TTA prediction.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import torch

from benchmarks.harness import REPO, Figure, Settings, best, build_module, interleaved, python


def predict_whole(net, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, H, W) class probabilities."""
    return net(images).softmax(dim=1)


def predict_sliding(net, images: torch.Tensor, window: int, overlap: float = 1 / 3) -> torch.Tensor:
    """Average the probabilities of overlapping ``window``-sized tiles (B, 3, H, W) -> (B, C, H, W)."""
    _, _, height, width = images.shape
    stride = max(1, int(window * (1 - overlap)))

    def starts(size: int) -> list[int]:
        last = max(0, size - window)
        return sorted({*range(0, last + 1, stride), last})

    total = counts = None
    for top in starts(height):
        for left in starts(width):
            tile = images[..., top : top + window, left : left + window]
            probs = net(tile).softmax(dim=1)
            if total is None:
                total = images.new_zeros((images.shape[0], probs.shape[1], height, width))
                counts = images.new_zeros((1, 1, height, width))
            total[..., top : top + window, left : left + window] += probs
            counts[..., top : top + window, left : left + window] += 1
    return total / counts


def predict_tta(net, images: torch.Tensor) -> torch.Tensor:
    """Mean probabilities over identity, horizontal and vertical flips."""
    probs = net(images).softmax(dim=1)
    for dim in (-1, -2):
        probs += net(images.flip(dim)).softmax(dim=1).flip(dim)
    return probs / 3


def images_per_second(fn, net, images: torch.Tensor, repeats: int) -> float:
    def measure() -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            fn(net, images)
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
    net = build_module(cfg, list(cfg.data.class_names)).eval()
    images = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        predict_sliding(net, images, window)
        predict_tta(net, images)


def run(settings: Settings) -> list[Figure]:
    cfg = settings.compose()
    train_size = int(cfg.data.generate.image_size)
    size, batch, repeats = (train_size * 2, 2, 1) if settings.quick else (train_size * 2, 4, 3)
    net = build_module(cfg, list(cfg.data.class_names)).eval()
    images = torch.randn(batch, 3, size, size)
    engine = importlib.util.find_spec("segexp.inference") is not None
    label = "local" if not engine else "local (segexp.inference exists: wire it in here)"
    figures = [
        Figure(
            f"whole image, {size}px ({label})",
            images_per_second(predict_whole, net, images, repeats),
            "img/s",
            note=f"batch {batch}",
        ),
        Figure(
            f"sliding window {train_size}px, 1/3 overlap ({label})",
            images_per_second(lambda n, x: predict_sliding(n, x, train_size), net, images, repeats),
            "img/s",
        ),
        Figure(
            f"flip TTA x3 ({label})", images_per_second(predict_tta, net, images, repeats), "img/s"
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
