"""Learning-rate schedules stepped per iteration, built from ``scheduler/`` configs.

Each factory takes the optimizer and the total number of optimisation steps
(``trainer.estimated_stepping_batches``) and returns a ``LambdaLR``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_factor(step: int, warmup_steps: int, warmup_start: float) -> float:
    return warmup_start + (1.0 - warmup_start) * step / max(1, warmup_steps)


def poly(
    optimizer: Optimizer,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_start: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """DeepLab's poly schedule: lr * (1 - step / total_steps) ** power, after an optional linear warmup."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup_factor(step, warmup_steps, warmup_start)
        progress = min(1.0, step / max(1, total_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress) ** power

    return LambdaLR(optimizer, factor)


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Cosine decay to ``min_lr_ratio * lr`` over the steps after a linear warmup."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup_factor(step, warmup_steps, warmup_start)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
