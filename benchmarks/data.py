"""Figure 2: images/s the DataModule delivers vs images/s the model trains on.

The loader is the configured one (default augmentation, ``data.num_workers``),
timed over one epoch from its first batch (worker start-up is reported apart).
The model's rate is a bare training step (forward, backward, optimizer) at the
same batch size, taken from figure 1 when it ran. A per-stage profile (read,
augment + normalise, collate) in one process shows where a sample's time goes.

Caveat on a 2-core machine: the loader's workers and the model share the cores
during training, so the ratio measured apart is an upper bound on the headroom.
"""

from __future__ import annotations

import copy
import time

from benchmarks.harness import Figure, Settings, first_batches, prepared_datamodule
from segexp.model.module import build_module

TARGET = ">= 2"


def loader_rate(loader) -> tuple[float, float, int]:
    """(images/s after the first batch, seconds to the first batch, images) over one epoch."""
    began = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    images = 0
    for batch in iterator:
        images += len(batch["image"])
    elapsed = time.perf_counter() - first
    return (images / elapsed if images else float("nan")), first - began, images


def stage_profile(dataset, count: int) -> dict[str, float]:
    """Milliseconds per sample for reading the files and for the transform pipeline."""
    count = min(count, len(dataset))
    began = time.perf_counter()
    raw = [dataset.load(i) for i in range(count)]
    read = time.perf_counter() - began
    began = time.perf_counter()
    for image, mask in raw:
        dataset.transform(image=image, mask=mask)
    transform = time.perf_counter() - began
    began = time.perf_counter()
    samples = [dataset[i] for i in range(count)]
    item = time.perf_counter() - began
    from torch.utils.data import default_collate

    began = time.perf_counter()
    default_collate([{k: s[k] for k in ("image", "mask")} for s in samples])
    collate = time.perf_counter() - began
    return {
        "read": 1000 * read / count,
        "augment+normalise": 1000 * transform / count,
        "__getitem__ total": 1000 * item / count,
        "collate": 1000 * collate / count,
    }


def run(settings: Settings) -> list[Figure]:
    from hydra.utils import instantiate

    from benchmarks.overhead import bare_loop

    cfg = settings.compose()
    datamodule = prepared_datamodule(cfg)
    workers = datamodule.num_workers
    delivered, startup, images = loader_rate(datamodule.train_dataloader())

    batch_size = datamodule.batch_size
    step_s = settings.cache.get("train_step_s")
    source = "figure 1's bare loop"
    if step_s is None or settings.cache.get("batch_size") != batch_size:
        steps = 3 if settings.quick else 6
        inline = copy.copy(datamodule)
        inline.num_workers = 0
        batches = first_batches(inline.train_dataloader(), steps)
        module = build_module(cfg, datamodule)
        step_s = bare_loop(module, batches, instantiate(cfg.optimizer), None, warmup=1)
        source = f"{steps}-step bare loop"
    consumed = batch_size / step_s

    profile = stage_profile(datamodule.datasets["train"], 8 if settings.quick else 64)
    figures = [
        Figure(
            f"loader delivers ({workers} workers, default augment)",
            delivered,
            "img/s",
            note=f"{images} images after the first batch",
        ),
        Figure("loader start-up (workers, first batch)", startup, "s"),
        Figure("model trains on (fwd+bwd+step)", consumed, "img/s", note=source),
    ]
    figures += [
        Figure(f"profile, 1 process: {stage}", ms, "ms/img") for stage, ms in profile.items()
    ]
    figures.append(Figure("loader img/s / model img/s", delivered / consumed, "x", TARGET))
    return figures
