"""Optimizers with parameter groups, and learning-rate schedules stepped per iteration.

``optimizer/`` configs point at :func:`build_optimizer` (a partial taking the
module); ``scheduler/`` configs point at :func:`poly`, :func:`cosine` or
:func:`onecycle` (partials taking the optimizer and the total number of
optimisation steps, ``trainer.estimated_stepping_batches``).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from segexp.errors import UserError

# Parameters of these layers are scales and shifts, not filters: decaying them
# towards zero fights the normalisation rather than regularising it.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _is_norm(module: nn.Module) -> bool:
    # timm's and smp's own norm layers (LayerNorm2d, BatchNormAct2d, ...) subclass these.
    return isinstance(module, NORM_LAYERS)


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    encoder_lr_mult: float = 1.0,
    no_weight_decay_norm_bias: bool = False,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into named groups: encoder / decoder x decay / no decay.

    A parameter belongs to the encoder when a module on its path is called
    ``encoder`` (smp models and FCN name theirs so); its learning rate is
    ``lr * encoder_lr_mult``. With ``no_weight_decay_norm_bias``, biases and the
    parameters of normalisation layers get ``weight_decay=0``. Frozen
    parameters (``requires_grad=False``) are left out; empty groups are dropped.
    """
    no_decay: set[int] = set()
    if no_weight_decay_norm_bias:
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                if _is_norm(submodule) or name == "bias":
                    no_decay.add(id(param))
    groups: dict[str, dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        part = "encoder" if "encoder" in name.split(".") else "decoder"
        decays = id(param) not in no_decay
        key = part if decays else f"{part}_no_decay"
        group = groups.setdefault(
            key,
            {
                "name": key,
                "params": [],
                "lr": lr * (encoder_lr_mult if part == "encoder" else 1.0),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(param)
    order = ["encoder", "encoder_no_decay", "decoder", "decoder_no_decay"]
    return [groups[key] for key in order if key in groups]


def build_optimizer(
    module: nn.Module,
    optimizer_class: str = "torch.optim.AdamW",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    encoder_lr_mult: float = 1.0,
    no_weight_decay_norm_bias: bool = False,
    **kwargs: Any,
) -> Optimizer:
    """Any torch optimizer (``optimizer_class``, a dotted path) over :func:`param_groups` of ``module``.

    ``kwargs`` go to the optimizer (``momentum``, ``nesterov``, ``betas``, ...).
    """
    from hydra.utils import get_class

    try:
        cls = get_class(optimizer_class)
    except Exception as error:
        raise UserError(
            f"optimizer.optimizer_class={optimizer_class!r} does not import ({error}); "
            "use a dotted path such as torch.optim.AdamW or torch.optim.SGD."
        ) from error
    groups = param_groups(module, lr, weight_decay, encoder_lr_mult, no_weight_decay_norm_bias)
    if not groups:
        raise UserError("optimizer: the model has no trainable parameters.")
    return cls(groups, lr=lr, weight_decay=weight_decay, **kwargs)


def _check_total_steps(total_steps: float, name: str) -> int:
    if not math.isfinite(total_steps) or total_steps < 1:
        raise UserError(
            f"scheduler={name} needs a finite number of optimisation steps, got {total_steps}; "
            "set trainer.max_epochs or trainer.max_steps, or use scheduler=none."
        )
    return int(total_steps)


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
    """DeepLab's poly schedule: lr * (1 - step / total_steps) ** power, after an optional linear warmup.

    With ``min_lr_ratio`` r the factor is ``r + (1 - r) * (1 - step/total) ** power``.
    """
    total_steps = _check_total_steps(total_steps, "poly")

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
    """Linear warmup from ``warmup_start * lr`` to lr, then cosine decay to ``min_lr_ratio * lr``."""
    total_steps = _check_total_steps(total_steps, "cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup_factor(step, warmup_steps, warmup_start)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def onecycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
    three_phase: bool = False,
) -> LRScheduler:
    """Smith's one-cycle policy (``torch.optim.lr_scheduler.OneCycleLR``).

    The peak of each parameter group is its configured lr (so the encoder LR
    multiplier holds); it starts at peak / ``div_factor``, rises for
    ``pct_start`` of the steps and anneals to start / ``final_div_factor``.
    """
    total_steps = _check_total_steps(total_steps, "onecycle")
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum,
        three_phase=three_phase,
    )
