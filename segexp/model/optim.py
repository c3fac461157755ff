"""Optimizers with parameter groups, and learning-rate schedules stepped per iteration.

``optimizer/`` configs point at :func:`build_optimizer` (a partial taking the
module); ``scheduler/`` configs point at :func:`poly`, :func:`cosine` or
:func:`onecycle` (partials taking the optimizer and the total number of
optimisation steps, ``trainer.estimated_stepping_batches``).

Every schedule's length can change after it is built (:func:`set_total_steps`): a run
with a time budget (``segexp.run.budget``) learns how many steps fit only once it has
measured its step time, and the schedule must still end at the last step. The total
lives in the scheduler's state, so checkpoints keep it.
"""

from __future__ import annotations

import inspect
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
    fused: bool | None = None,
    **kwargs: Any,
) -> Optimizer:
    """Any torch optimizer (``optimizer_class``, a dotted path) over :func:`param_groups` of ``module``.

    ``kwargs`` go to the optimizer (``momentum``, ``nesterov``, ``betas``, ...). ``fused``:
    torch's fused (one kernel for all parameters) implementation; None uses it when every
    parameter is on a CUDA device and the optimizer offers it (AdamW, Adam, SGD, ...), and
    torch's default elsewhere, so CPU runs keep their numbers.
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
    offers_fused = "fused" in inspect.signature(cls).parameters
    if fused is None:
        on_cuda = all(p.is_cuda for group in groups for p in group["params"])
        fused = True if offers_fused and on_cuda else None
    elif not offers_fused:
        raise UserError(
            f"optimizer.fused={fused}: {optimizer_class} has no fused implementation; "
            "set optimizer.fused=null."
        )
    if fused is not None:
        kwargs["fused"] = fused
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


class StepFactor:
    """A LambdaLR factor whose ``total_steps`` may change during training.

    A callable object rather than a closure: LambdaLR saves its ``__dict__`` in the
    scheduler's state (a checkpoint keeps the adjusted total) and restores it on resume.
    """

    def __init__(self, total_steps: int, **params: Any) -> None:
        self.total_steps = int(total_steps)
        self.__dict__.update(params)

    def __call__(self, step: int) -> float:
        raise NotImplementedError


class PolyFactor(StepFactor):
    power: float
    warmup_steps: int
    warmup_start: float
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps, self.warmup_start)
        progress = min(1.0, step / max(1, self.total_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * (1.0 - progress) ** self.power


class CosineFactor(StepFactor):
    warmup_steps: int
    warmup_start: float
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps, self.warmup_start)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


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
    factor = PolyFactor(
        total_steps,
        power=power,
        warmup_steps=warmup_steps,
        warmup_start=warmup_start,
        min_lr_ratio=min_lr_ratio,
    )
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
    factor = CosineFactor(
        total_steps, warmup_steps=warmup_steps, warmup_start=warmup_start, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, factor)


class AdjustableOneCycleLR(OneCycleLR):
    """torch's OneCycleLR (same formula) whose ``total_steps`` may change during training:
    :meth:`set_total_steps` moves the phase boundaries to the same fractions of the new total."""

    def __init__(self, optimizer: Optimizer, *, pct_start: float, **kwargs: Any) -> None:
        self.pct_start = float(pct_start)
        super().__init__(optimizer, pct_start=pct_start, **kwargs)

    def set_total_steps(self, total_steps: int) -> None:
        total = int(total_steps)
        self.total_steps = total
        ends = [float(self.pct_start * total) - 1, total - 1]
        if len(self._schedule_phases) == 3:
            ends = [
                float(self.pct_start * total) - 1,
                float(2 * self.pct_start * total) - 2,
                total - 1,
            ]
        for phase, end in zip(self._schedule_phases, ends, strict=True):
            phase["end_step"] = end


def set_total_steps(scheduler: Any, total_steps: int) -> bool:
    """Make ``scheduler`` (one of :func:`poly`, :func:`cosine`, :func:`onecycle`) end after
    ``total_steps`` optimisation steps; never fewer than it has already taken.

    Returns False for a scheduler whose length cannot change (it is left as it is).
    """
    total = max(int(total_steps), int(getattr(scheduler, "last_epoch", 0)), 1)
    if isinstance(scheduler, AdjustableOneCycleLR):
        scheduler.set_total_steps(total)
        return True
    factors = [f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, StepFactor)]
    for factor in factors:
        factor.total_steps = total
    return bool(factors)


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
    """Smith's one-cycle policy (``torch.optim.lr_scheduler.OneCycleLR``, adjustable length).

    The peak of each parameter group is its configured lr (so the encoder LR
    multiplier holds); it starts at peak / ``div_factor``, rises for
    ``pct_start`` of the steps and anneals to start / ``final_div_factor``.
    """
    total_steps = _check_total_steps(total_steps, "onecycle")
    return AdjustableOneCycleLR(
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
