"""Figure 3: evaluation with every metric vs forward passes only.

Both run ``trainer.validate`` with the same Trainer settings on the same val
batches held in memory: once with SegModule as it is (loss, confusion-matrix
update, per-class scores computed and logged at epoch end), once with a
subclass whose validation step only runs the network. The ratio is the cost of
the metrics, nothing else.

A third arm, interleaved with the two, bounds what any val loss can cost here: torch's
own fused cross-entropy in place of the configured loss (ce_dice by default), with the
same argmax, confusion matrix and epoch end. Its ratio is the floor of the figure while
a softmax loss is computed per batch.
"""

from __future__ import annotations

import time

from benchmarks.harness import (
    Figure,
    Settings,
    best,
    first_batches,
    interleaved,
    median,
    prepared_datamodule,
    silenced,
)

TARGET = "<= 1.03"


def forward_only(module):
    """The same module, evaluated without loss or metrics."""

    class ForwardOnly(type(module)):
        def validation_step(self, batch, batch_idx):
            self(batch["image"])

        def on_validation_epoch_end(self) -> None:
            pass

    module.__class__ = ForwardOnly
    return module


def cheapest_loss(module):
    """The same module, with torch's fused cross-entropy as its validation loss."""
    import torch.nn.functional as F

    from segexp.model.metrics import argmax_classes

    class CheapestLoss(type(module)):
        def validation_step(self, batch, batch_idx):
            logits = self(batch["image"])
            confmat = self.confmats["val"]
            loss = F.cross_entropy(logits, batch["mask"], ignore_index=confmat.ignore_index)
            confmat.update(argmax_classes(logits), batch["mask"], loss)

    module.__class__ = CheapestLoss
    return module


def run(settings: Settings) -> list[Figure]:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from segexp.model.module import build_module

    cfg = settings.compose(["data.num_workers=0"])
    datamodule = prepared_datamodule(cfg)
    loader = datamodule.val_dataloader()
    batches = first_batches(loader, len(loader))
    full = build_module(cfg, datamodule)
    bare = forward_only(build_module(cfg, datamodule))
    bare.load_state_dict(full.state_dict())
    floor = cheapest_loss(build_module(cfg, datamodule))
    floor.load_state_dict(full.state_dict())
    # Ten pairs, each arm right after the other: a 2-core VM's step time drifts by a few
    # percent between seconds, as much as the figure itself; the median of the pairs' ratios
    # follows the drift where the ratio of the two best times need not.
    repeats = 1 if settings.quick else 10

    def timed(module):
        def measure() -> float:
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
            )
            began = time.perf_counter()
            with silenced():
                trainer.validate(
                    module, dataloaders=DataLoader(batches, batch_size=None), verbose=False
                )
            return time.perf_counter() - began

        return measure

    arms = {"full": timed(full), "forward": timed(bare), "floor": timed(floor)}
    results = interleaved(arms, repeats, warmup=True)
    full_s, forward_s = best(results["full"]), best(results["forward"])

    def ratio_to_forward(arm: str) -> float:
        return median([a / b for a, b in zip(results[arm], results["forward"], strict=True)])

    ratio = ratio_to_forward("full")
    images = sum(len(b["image"]) for b in batches)
    shape = tuple(batches[0]["image"].shape)
    return [
        Figure("validate, forward only", forward_s, "s", note=f"{images} images, batches {shape}"),
        Figure("validate, loss + all metrics", full_s, "s", note=f"best of {repeats}"),
        Figure("the same, ratio of the best times", full_s / forward_s, "x"),
        Figure("all metrics / forward only", ratio, "x", TARGET, note=f"median of {repeats} pairs"),
        Figure(
            "the same with torch's cross-entropy as the loss",
            ratio_to_forward("floor"),
            "x",
            note=f"the floor while a val loss is kept; loss here: {loss_name(cfg)}",
        ),
        *torchmetrics_side_by_side(settings, int(cfg.data.num_classes)),
    ]


def loss_name(cfg) -> str:
    target = str(cfg.loss.get("_target_", ""))
    if target.endswith("WeightedSum"):
        return " + ".join(cfg.loss.losses)
    return target.rsplit(".", 1)[-1]


def torchmetrics_side_by_side(
    settings: Settings, num_classes: int, device: str = "cpu"
) -> list[Figure]:
    """Per-batch update cost of our confusion matrix (EvalState) vs torchmetrics'
    MulticlassJaccardIndex and MulticlassConfusionMatrix (validate_args=False, ignore_index),
    from the same predicted and target maps, on ``device`` (a GPU's time is taken after
    synchronising it); ~10% of target pixels ignored. Needs torch and torchmetrics only:
    ``python -m benchmarks.gpu --metrics`` runs it on a GPU machine."""
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    from segexp.model.metrics import EvalState

    cases = [(64, 4)] if settings.quick else [(64, 4), (512, 8)]
    on_gpu = torch.device(device).type == "cuda"
    figures = []
    for side, batch in cases:
        generator = torch.Generator().manual_seed(0)
        preds = torch.randint(0, num_classes, (batch, side, side), generator=generator)
        target = torch.randint(0, num_classes, (batch, side, side), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        preds, target = preds.to(device), target.to(device)
        metrics = {
            "ours": EvalState(num_classes, ignore_index=255),
            "jaccard": MulticlassJaccardIndex(num_classes, ignore_index=255, validate_args=False),
            "confmat": MulticlassConfusionMatrix(
                num_classes, ignore_index=255, validate_args=False
            ),
        }
        for metric in metrics.values():
            metric.to(device)
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        repeat = 3 if settings.quick else (200 if side == 64 else 10)

        def timed(metric, preds=preds, target=target, repeat=repeat, sync=sync):
            def measure() -> float:
                sync()
                began = time.perf_counter()
                for _ in range(repeat):
                    metric.update(preds, target)
                sync()
                return (time.perf_counter() - began) / repeat

            return measure

        results = interleaved({k: timed(m) for k, m in metrics.items()}, 5, warmup=True)
        ms = {k: best(v) * 1e3 for k, v in results.items()}
        agree = torch.equal(metrics["ours"].confmat, metrics["confmat"].confmat)
        where = f"{side} px x batch {batch}, " + (torch.cuda.get_device_name() if on_gpu else "CPU")
        figures += [
            Figure(f"update ms, ours / Jaccard / ConfMat ({side} px)", ms["ours"], "ms",
                   note=f"{ms['jaccard']:.3g} / {ms['confmat']:.3g} ms; {where}; same counts: {agree}"),
            Figure(f"torchmetrics Jaccard / ours ({side} px)", ms["jaccard"] / ms["ours"], "x"),
            Figure(f"torchmetrics ConfMat / ours ({side} px)", ms["confmat"] / ms["ours"], "x"),
        ]  # fmt: skip
    return figures
