"""``recipe=auto``: choose the training recipe from the dataset's statistics and the budget.

Before anything is built, the run reads the train split's statistics (image sizes, number
of images, pixel frequency of each class: ``segexp.data.stats``; cached per dataset under
``<paths.data_dir>/recipe_stats``) and :func:`choose` decides what a
careful practitioner would:

- **image size**: images up to ``FULL_SIZE_MAX`` px train whole, and so do images up to the
  device's largest crop (``CROP_CAP``) unless the CPU budget is short: a crop of an image that
  fits would only throw context away. Larger images train on random crops (``augment=crop``;
  ``augment=strong`` for a small dataset with time to learn its distortions), the crop as
  large as the images and the machine allow (small crops in a short CPU budget: more steps),
  validation at the images' own size;
- **batch size**: about the same number of pixels per step as the tuned default (more on a GPU);
- **model**: ``unet_small`` (stride 16, a quarter of the parameters: more steps per minute)
  for small images or a CPU budget under ``SMALL_MODEL_CPU_BUDGET_S``, ``unet`` (stride 32:
  the context large objects need) otherwise;
- **loss**: Dice added to cross-entropy when a class is rare, plain cross-entropy for
  balanced classes; in a short CPU budget, cross-entropy weighted by median frequency as
  well when a class is very rare (Dice alone needs hundreds of steps to find such a class;
  given them, the weights only add false positives);
- **augmentation strength**: as above;
- **epochs**, without a budget: about ``TARGET_STEPS`` optimisation steps (with a budget the
  budget sets the steps, ``segexp.run.budget``).

Every choice is printed with its reason and written into the run's ``.hydra/config.yaml``
(with ``recipe: auto-applied``), so ``reproduce=`` composes the chosen values and does not
choose again; the statistics and the choices go into ``run_info.json``. A key set on the
command line (``model=fpn``, ``data.batch_size=8``, ...) is never changed: the recipe
leaves that whole key (or config group) alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from segexp.configs import CONF_DIR
from segexp.data.stats import DatasetStats, cached_stats
from segexp.errors import UserError

APPLIED = "auto-applied"
FULL_SIZE_MAX = 160  # px, longer side: images up to this train whole
CROPS = (128, 192, 256, 384, 512)
PIXELS_PER_BATCH = {"cpu": 4 * 64 * 64, "gpu": 8 * 512 * 512}  # the tuned defaults
CROP_CAP = {"cpu": 256, "gpu": 512}
SHORT_CPU_BUDGET_S = 600  # below this on a CPU: small crops, class weights for a very rare class
SMALL_MODEL_CPU_BUDGET_S = 3600  # below this on a CPU: the smaller network
STRONG_AUGMENT_MAX_IMAGES = 300  # fewer train images than this, and time: augment=strong
STRONG_AUGMENT_MIN_BUDGET_S = 1800
RARE = 0.05  # a class below this fraction of the labelled pixels is rare: Dice is added
VERY_RARE = 0.005  # below this, in a short CPU budget: cross-entropy weighted as well
TARGET_STEPS = {"cpu": 2800, "gpu": 20000}  # steps of a run without a budget
EPOCH_RANGE = (5, 300)


class RecipeError(UserError):
    """``recipe=`` has a value the recipe does not know."""


@dataclass
class Choice:
    """One decision: ``key`` (a config group when ``group``) set to ``value``, and why."""

    key: str
    value: Any
    why: str
    group: bool = False

    def text(self) -> str:
        return f"{self.key}={self.value}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def choose(
    stats: DatasetStats,
    budget_s: float | None,
    device: str = "cpu",
    class_names: list[str] | None = None,
) -> list[Choice]:
    """The recipe for a dataset with these statistics, trained for ``budget_s`` seconds
    (None: no budget) on ``device`` ("cpu" or "gpu"). Group choices come before the keys
    inside those groups."""
    names = class_names or [f"class_{i}" for i in range(len(stats.class_fraction))]
    cpu_budget = budget_s if device == "cpu" and budget_s is not None else math.inf
    short_budget = cpu_budget < SHORT_CPU_BUDGET_S
    size = f"{stats.width}x{stats.height} px"
    choices: list[Choice] = []

    # Image size: whole images when small (or no larger than a crop, given time), else crops.
    whole = stats.long_side <= FULL_SIZE_MAX or (
        not short_budget and stats.long_side <= CROP_CAP[device]
    )
    if whole:
        choices.append(
            Choice(
                "augment",
                "light",
                f"images of {size} train whole"
                + ("" if stats.long_side <= FULL_SIZE_MAX else ": a crop would only lose context")
                + "; flips and 90-degree turns are safe for any data",
                group=True,
            )
        )
        pixels = stats.height * stats.width
    else:
        cap = CROPS[0] if short_budget else CROP_CAP[device]
        crop = max([c for c in CROPS if c <= min(stats.short_side, cap)] or [CROPS[0]])
        strong = stats.images < STRONG_AUGMENT_MAX_IMAGES and (
            budget_s is None or budget_s >= STRONG_AUGMENT_MIN_BUDGET_S
        )
        choices.append(
            Choice(
                "augment",
                "strong" if strong else "crop",
                (
                    f"only {stats.images} train images and time to learn from distortions: "
                    "scale, rotation, colour jitter"
                    if strong
                    else "mild rescaling and flips: "
                    + (
                        f"{stats.images} images are variety enough"
                        if stats.images >= STRONG_AUGMENT_MAX_IMAGES
                        else "a short run has no time to learn from strong distortions"
                    )
                ),
                group=True,
            )
        )
        why = f"images of {size} are larger than a step can afford"
        if short_budget:
            why += f" in a {_minutes(budget_s)} CPU budget"
        choices.append(Choice("augment.crop_size", crop, f"random crops: {why}"))
        val_size = min(1024, 32 * math.ceil(stats.long_side / 32))
        choices.append(Choice("augment.val_max_size", val_size, "validate at the images' own size"))
        pixels = crop * crop

    # Batch size: the pixels per step of the tuned default.
    batch = int(min(16, max(4, round(PIXELS_PER_BATCH[device] / pixels))))
    choices.append(
        Choice(
            "data.batch_size",
            batch,
            f"about {PIXELS_PER_BATCH[device] // 1000}k pixels per step ({'GPU' if device == 'gpu' else 'CPU'}); "
            "at least 4 for batch-norm statistics",
        )
    )

    # Model: stride 16 and fewer parameters for small images and CPU runs of under an hour.
    if stats.long_side <= 128 or cpu_budget < SMALL_MODEL_CPU_BUDGET_S:
        reason = (
            f"images of {size}: stride 16 already sees the whole image"
            if stats.long_side <= 128
            else f"a {_minutes(budget_s)} CPU budget: a quarter of the parameters, more steps"
        )
        choices.append(Choice("model", "unet_small", reason, group=True))
    else:
        choices.append(
            Choice(
                "model",
                "unet",
                f"images of {size}: stride 32 gives large objects context",
                group=True,
            )
        )

    # Loss: Dice for rare classes, weighted cross-entropy for very rare ones.
    present = [(f, n) for f, n in zip(stats.class_fraction, names, strict=False) if f > 0]
    rarest, rare_name = min(present) if present else (1.0, "")
    if rarest < RARE:
        choices.append(
            Choice(
                "loss",
                "ce_dice",
                f"'{rare_name}' is {rarest:.2%} of the labelled pixels: Dice weighs every class alike",
                group=True,
            )
        )
        if rarest < VERY_RARE and short_budget:
            choices.append(
                Choice(
                    "loss.losses.ce.weight",
                    "auto",
                    f"'{rare_name}' is under {VERY_RARE:.1%} and the budget short: "
                    "cross-entropy weighted by median frequency",
                )
            )
    else:
        choices.append(
            Choice(
                "loss",
                "ce",
                f"classes are balanced (the rarest, '{rare_name}', is {rarest:.1%}): cross-entropy",
                group=True,
            )
        )

    # Epochs: only without a budget (a budget sets the number of steps).
    if budget_s is None:
        per_epoch = max(1, math.ceil(stats.images / batch))
        epochs = int(
            min(EPOCH_RANGE[1], max(EPOCH_RANGE[0], round(TARGET_STEPS[device] / per_epoch)))
        )
        choices.append(
            Choice(
                "trainer.max_epochs",
                epochs,
                f"about {TARGET_STEPS[device]} steps at {per_epoch} steps per epoch",
            )
        )
    return choices


def _covers(user_key: str, key: str) -> bool:
    """A command-line key that fixes ``key`` (the same key, a key inside it, or its group)."""
    if user_key == key or user_key.startswith(key + "."):
        return True
    # ``data.root=...`` fixes everything under it; a group choice (``data=folder``) does not
    # fix the keys inside the group (a chosen group is kept whole by keep_user_keys).
    return "." in user_key and key.startswith(user_key + ".")


def keep_user_keys(choices: list[Choice], user_keys: set[str]) -> tuple[list[Choice], list[Choice]]:
    """(the choices to apply, those left out because the command line set their key)."""
    kept = [c for c in choices if any(_covers(u, c.key) for u in user_keys)]
    groups_kept = {c.key for c in kept if c.group}
    kept += [
        c for c in choices if c not in kept and not c.group and c.key.split(".")[0] in groups_kept
    ]
    return [c for c in choices if c not in kept], kept


def load_group(group: str, option: str, conf_dir: Path = CONF_DIR) -> DictConfig:
    """``conf/<group>/<option>.yaml`` as composed (its defaults from the same group merged first)."""
    path = conf_dir / group / f"{option}.yaml"
    node = OmegaConf.load(path)
    defaults = node.pop("defaults", []) if isinstance(node, DictConfig) else []
    parts = [
        load_group(group, d, conf_dir) for d in defaults if isinstance(d, str) and d != "_self_"
    ]
    return OmegaConf.merge(*parts, node) if parts else node


def apply_choices(cfg: DictConfig, choices: list[Choice], conf_dir: Path = CONF_DIR) -> None:
    """Set every choice in ``cfg`` (in place) and mark it ``recipe: auto-applied``."""
    with open_dict(cfg):
        for choice in choices:
            if choice.group:
                cfg[choice.key] = load_group(choice.key, str(choice.value), conf_dir)
            else:
                OmegaConf.update(cfg, choice.key, choice.value, force_add=True)
        cfg.recipe = APPLIED


def command_line_keys() -> set[str]:
    """The keys this Hydra job's command line sets (task overrides); empty outside Hydra."""
    from segexp.run.job import hydra_context, override_key

    context = hydra_context() or {}
    return {override_key(o) for o in context.get("overrides", [])}


def _device(cfg: DictConfig) -> str:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        return "gpu"
    if accelerator == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def choose_for(cfg: DictConfig, budget_s: float | None) -> tuple[DatasetStats, list[Choice]]:
    """The train split's statistics (scanned once, then cached) and the recipe ``choose``
    gives for them, this budget and the configured device; ``cfg`` is left as it is."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # generated datasets (shapes) are written here
    stats = cached_stats(
        datamodule.raw_dataset("train"),
        datamodule.num_classes,
        datamodule.ignore_index,
        Path(cfg.paths.data_dir) / "recipe_stats",
    )
    return stats, choose(stats, budget_s, _device(cfg), datamodule.class_names)


def apply_recipe(
    cfg: DictConfig, budget_s: float | None = None, user_keys: set[str] | None = None
) -> list[Choice] | None:
    """``recipe=auto``: choose, apply to ``cfg``, print, and record in run_info.json (rank 0).

    ``recipe: auto-applied`` (a reproduction) and ``recipe: null`` do nothing and return None.
    """
    from segexp.run.ranks import is_global_zero
    from segexp.run.rundir import update_run_info

    recipe = cfg.get("recipe")
    if recipe in (None, APPLIED):
        return None
    if recipe != "auto":
        raise RecipeError(
            f"recipe={recipe!r}: the only recipe is 'auto' (choose from the data and the budget); "
            "drop recipe= to train the configured one."
        )
    user_keys = command_line_keys() if user_keys is None else set(user_keys)
    stats, choices = choose_for(cfg, budget_s)
    applied, kept = keep_user_keys(choices, user_keys)
    apply_choices(cfg, applied)
    if not is_global_zero():
        return applied

    rarest = min((f for f in stats.class_fraction if f > 0), default=0.0)
    lines = [
        f"recipe=auto: {stats.images} train images of {stats.width}x{stats.height} px (median), "
        f"{len(stats.class_fraction)} classes, the rarest {rarest:.2%} of the labelled pixels; "
        + (f"budget {_minutes(budget_s)}" if budget_s else "no budget")
    ]
    width = max((len(c.text()) for c in choices), default=0)
    lines += [f"  {c.text():<{width}}  {c.why}" for c in applied]
    lines += [f"  {c.text():<{width}}  not applied: set on the command line" for c in kept]
    print("\n".join(lines), flush=True)

    # The saved config gets the applied choices from the lifecycle's one write of it
    # (segexp.run.lifecycle.record_config), so reproduce= composes them and does not choose again.
    update_run_info(
        Path(cfg.paths.output_dir),
        {
            "recipe": {
                "stats": asdict(stats),
                "budget_s": budget_s,
                "choices": [{**asdict(c), "applied": c in applied} for c in choices],
            }
        },
    )
    return applied


__all__ = [
    "Choice",
    "apply_choices",
    "apply_recipe",
    "choose",
    "choose_for",
    "keep_user_keys",
]
