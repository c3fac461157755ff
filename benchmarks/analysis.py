"""Figure 10: what ``segexp eval``'s analysis (per-image scores, worst images, Boundary IoU,
object sizes, the page) costs in time and memory.

- **Time.** A default-recipe checkpoint trained for a few epochs, evaluated on the default
  data's test split (shapes, 80 images of 64 px) with the analysis on and off
  (``analysis.enabled=false``): fresh ``segexp eval`` processes, interleaved, median wall
  time; and, in this process, the share of ``evaluate()``'s time spent in the analysis
  callback's hooks (start-up excluded, one run: robust to a busy machine).
  Target: on / off <= 1.3.
- **Memory.** Peak RSS (GNU time, fresh process) of ``segexp eval`` (one process,
  ``data.num_workers=0``) on generated 512 px splits of growing length: it must not grow
  with the split (the analysis streams). On this 2-core machine the network takes 1-2 s per
  512 px image, so the whole eval is measured on short splits, and the analysis itself (the
  same callback, fed 512 px predictions without the network) on 5,000 images. Target < 2 GB.

    python -m benchmarks --only analysis
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.harness import Figure, Settings, interleaved, python, run_checked
from benchmarks.inference import peak_rss_mb

SIZE = 512  # the memory figures' image size (--quick: 128)


def checkpoint(settings: Settings) -> Path:
    """The default recipe trained briefly (cached in the results folder)."""
    run = settings.out_dir / "analysis" / "train"
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        epochs = 1 if settings.quick else 3
        run_checked(
            [python(), "train.py", *settings.overrides([f"trainer.max_epochs={epochs}"]),
             "test=false", "logger=csv", "trainer.enable_progress_bar=false",
             f"hydra.run.dir={run}"],
        )  # fmt: skip
    return ckpt


def eval_command(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        python(), "-m", "segexp", "eval", f"ckpt_path={ckpt}", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *extra,
    ]  # fmt: skip


def timed(args: list[str]) -> float:
    began = time.perf_counter()
    run_checked(args)
    return time.perf_counter() - began


def in_process_share(ckpt: Path, out: Path) -> tuple[float, float]:
    """(evaluate() seconds, of them inside the analysis callback's hooks), one run in this
    process: both from the same run, so a busy machine slows both alike."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from benchmarks.harness import CONF, silenced
    from segexp.infer.evaluate import evaluate
    from segexp.track.analysis import EvalAnalysis

    spent = [0.0]
    hooks = ("on_test_start", "on_test_batch_end", "on_test_end")
    originals = {name: getattr(EvalAnalysis, name) for name in hooks}

    def timed_hook(hook):
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - began

        return run

    overrides = [
        f"ckpt_path={ckpt}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    for name, hook in originals.items():
        setattr(EvalAnalysis, name, timed_hook(hook))
    try:
        began = time.perf_counter()
        with silenced():
            evaluate(cfg)
        return time.perf_counter() - began, spent[0]
    finally:
        for name, hook in originals.items():
            setattr(EvalAnalysis, name, hook)


def splits(settings: Settings, lengths: list[int], size: int) -> dict[int, Path]:
    """Folder datasets of shapes scenes, one per length (links into one drawn set)."""
    from benchmarks.harness import write_folder_dataset
    from segexp.data.shapes import CLASS_NAMES, draw_scene

    base = settings.data_dir / f"analysis-{size}px-{max(lengths)}"
    if not (base / "classes.txt").is_file():
        write_folder_dataset(
            base, {"test": max(lengths)}, lambda seed: draw_scene(seed, size), CLASS_NAMES
        )
    roots = {}
    for length in lengths:
        root = settings.data_dir / f"analysis-{size}px-first{length}"
        for kind in ("images", "masks"):
            folder = root / kind / "test"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(length):
                link = folder / f"{index:04d}.png"
                if not link.exists():
                    link.symlink_to(base / kind / "test" / f"{index:04d}.png")
        (root / "classes.txt").write_text((base / "classes.txt").read_text())
        roots[length] = root
    return roots


def stream(count: int, size: int, out: str) -> None:
    """Entry point of the analysis-only process: ``count`` predictions of ``size`` px through
    ``EvalAnalysis`` as ``segexp eval`` feeds it (batches of 4), then its files."""
    import numpy as np
    import torch

    from segexp.data.shapes import CLASS_NAMES, draw_scene
    from segexp.track.analysis import EvalAnalysis

    scenes = [draw_scene(seed, size) for seed in range(24)]
    mean, std = [0.5] * 3, [0.25] * 3
    module = SimpleNamespace(
        class_names=list(CLASS_NAMES), hparams=SimpleNamespace(ignore_index=255, mean=mean, std=std)
    )
    trainer = SimpleNamespace(
        world_size=1, is_global_zero=True, callback_metrics={}, default_root_dir=out
    )
    callback = EvalAnalysis(dirpath=out)
    callback.on_test_start(trainer, module)
    rng = np.random.default_rng(0)
    for start in range(0, count, 4):
        picked = [scenes[(start + i) % len(scenes)] for i in range(4)]
        images = torch.from_numpy(np.stack([p[0] for p in picked])).permute(0, 3, 1, 2).float()
        masks = torch.from_numpy(np.stack([p[1] for p in picked])).long()
        predictions = torch.roll(masks, shifts=int(rng.integers(1, 6)), dims=2)  # wrong edges
        batch = {
            "image": (images / 255 - 0.5) / 0.25,
            "mask": masks,
            "name": [f"{start + i:05d}" for i in range(4)],
            "path": [f"scenes/{start + i:05d}.png" for i in range(4)],
            "size": [(size, size)] * 4,
        }
        callback.on_test_batch_end(trainer, module, predictions, batch, start // 4)
    callback.on_test_end(trainer, module)


def run(settings: Settings) -> list[Figure]:
    ckpt = checkpoint(settings)
    out = settings.out_dir / "analysis"
    repeats = 1 if settings.quick else 3
    fresh = interleaved(
        {
            "on": lambda: timed(eval_command(ckpt, out / "eval-on")),
            "off": lambda: timed(eval_command(ckpt, out / "eval-off", "analysis.enabled=false")),
        },
        repeats,
    )
    in_process_share(ckpt, out / "inside")  # warm-up: first calls pay one-time imports
    inside = sorted(
        (in_process_share(ckpt, out / "inside") for _ in range(repeats)),
        key=lambda pair: pair[1] / pair[0],
    )
    total, spent = inside[len(inside) // 2]  # the run of median share
    on, off = statistics.median(fresh["on"]), statistics.median(fresh["off"])
    figures = [
        Figure(
            "segexp eval time, analysis on / off", on / off, "x", "<= 1.3",
            f"{on:.1f} s / {off:.1f} s, fresh processes, median of {repeats}",
        ),
        Figure(
            "evaluate() time / the same without the analysis hooks", total / (total - spent),
            "x", "<= 1.3", f"{spent:.2f} s of {total:.2f} s in the analysis callback",
        ),
    ]  # fmt: skip

    lengths, size = ([2, 4], 128) if settings.quick else ([40, 80, 160], SIZE)
    roots = splits(settings, lengths, size)
    peaks = {}
    for length, root in roots.items():
        peaks[length] = peak_rss_mb(
            eval_command(
                ckpt, out / f"rss-{length}", "data=folder", f"data.root={root}",
                "data.num_workers=0", "batch_size=4",
            )
        )  # fmt: skip
        figures.append(Figure(f"peak RSS, segexp eval of {length} images of {size} px", peaks[length], "MB"))  # fmt: skip
    longest = max(lengths)
    off_peak = peak_rss_mb(
        eval_command(
            ckpt, out / "rss-off", "data=folder", f"data.root={roots[longest]}",
            "data.num_workers=0", "batch_size=4", "analysis.enabled=false",
        )
    )  # fmt: skip
    figures.append(Figure(f"  the same, {longest} images, analysis off", off_peak, "MB"))
    slope = (peaks[longest] - peaks[min(lengths)]) / (longest - min(lengths)) * 1000
    figures.append(Figure("  RSS growth per 1,000 more images", slope, "MB"))
    count = 40 if settings.quick else 5000
    streamed = peak_rss_mb(
        [sys.executable, "-c",
         f"from benchmarks.analysis import stream; stream({count}, {size}, {str(out / 'stream')!r})"]
    )  # fmt: skip
    figures.append(
        Figure(
            f"peak RSS, the analysis alone, {count} images of {size} px",
            streamed,
            "MB",
            "<= 2048",
            "EvalAnalysis fed as segexp eval feeds it; CSV, worst images, page written",
        )  # fmt: skip
    )
    return figures
