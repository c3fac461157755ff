"""Check a composed train config before anything is built or read.

A wrong value should fail in a second with a message naming the key, the value,
the valid range and the fix, not after the dataset is generated or an epoch in.
``check_config`` collects every problem it finds and raises one ``ConfigError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segexp.errors import UserError


class ConfigError(UserError):
    """One or more config values that cannot work; each line names key, value, valid range, fix."""


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except Exception:  # missing (???) or an interpolation that cannot resolve
        return "???"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if isinstance(node, Mapping) else ""


def check_data(cfg: DictConfig) -> list[str]:
    problems = []
    num_classes = _get(cfg, "data.num_classes")
    if num_classes == "???":
        problems.append(
            "data.num_classes is not set: pass data.num_classes=N (N >= 2, background included)"
        )
    elif not _is_int(num_classes) or num_classes < 2:
        problems.append(
            f"data.num_classes={num_classes!r}: must be an integer >= 2 (background + at least one "
            "class); for a binary task use data.num_classes=2"
        )
    for key, low in (("data.batch_size", 1), ("data.val_batch_size", 1), ("data.num_workers", 0)):
        value = _get(cfg, key)
        if value is None and key == "data.val_batch_size":
            continue
        if value is not None and (not _is_int(value) or value < low):
            problems.append(f"{key}={value!r}: must be an integer >= {low}")
    ignore_index = _get(cfg, "data.ignore_index")
    if ignore_index is not None and not _is_int(ignore_index):
        problems.append(f"data.ignore_index={ignore_index!r}: must be an integer (usually 255)")
    return problems


def check_optim(cfg: DictConfig) -> list[str]:
    problems = []
    lr = _get(cfg, "optimizer.lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        problems.append(
            f"optimizer.lr={lr!r}: must be a positive finite number (e.g. 1e-3 for AdamW)"
        )
    weight_decay = _get(cfg, "optimizer.weight_decay")
    if weight_decay is not None and (not _is_number(weight_decay) or weight_decay < 0):
        problems.append(f"optimizer.weight_decay={weight_decay!r}: must be >= 0")
    momentum = _get(cfg, "optimizer.momentum")
    if momentum is not None and (not _is_number(momentum) or not 0 <= momentum <= 1):
        problems.append(f"optimizer.momentum={momentum!r}: must be in [0, 1]")
    warmup = _get(cfg, "scheduler.warmup_steps")
    if warmup is not None and (not _is_int(warmup) or warmup < 0):
        problems.append(f"scheduler.warmup_steps={warmup!r}: must be an integer >= 0")
    max_epochs = _get(cfg, "trainer.max_epochs")
    if max_epochs is not None and (
        not _is_int(max_epochs) or (max_epochs < 1 and max_epochs != -1)
    ):
        problems.append(
            f"trainer.max_epochs={max_epochs!r}: must be an integer >= 1 (or -1: no limit)"
        )
    return problems


def check_model(cfg: DictConfig) -> list[str]:
    model = _get(cfg, "model")
    import segmentation_models_pytorch as smp

    from segexp.model.networks import EXTRA_ARCHS, build_model

    builder = f"{build_model.__module__}.{build_model.__qualname__}"
    if not isinstance(model, Mapping) or _target(model) != builder:
        return []  # another builder: it checks its own arguments

    problems = []
    arch = str(model.get("arch", ""))
    archs = sorted({*smp.MODEL_ARCHITECTURES_MAPPING, *EXTRA_ARCHS})
    if arch.lower() not in archs:
        problems.append(f"model.arch={arch!r}: unknown architecture (valid: {', '.join(archs)})")
    encoder = str(model.get("encoder_name", ""))
    if arch.lower() in smp.MODEL_ARCHITECTURES_MAPPING and not _known_encoder(encoder):
        names = sorted(smp.encoders.get_encoder_names())
        close = [n for n in names if encoder.split("-")[0][:4] and n.startswith(encoder[:4])][:8]
        problems.append(
            f"model.encoder_name={encoder!r}: unknown encoder (valid: an smp encoder such as "
            f"{', '.join(close or names[:12])}, ..., or 'tu-<timm model name>')"
        )
    in_channels = model.get("in_channels", 3)
    if in_channels != 3:
        problems.append(
            f"model.in_channels={in_channels!r}: images are read as RGB, so it must be 3"
        )
    classes, num_classes = model.get("classes"), _get(cfg, "data.num_classes")
    if classes is not None and _is_int(num_classes) and classes != num_classes:
        problems.append(
            f"model.classes={classes!r} but data.num_classes={num_classes}: they must match; "
            "leave model.classes at ${data.num_classes}"
        )
    return problems


def _known_encoder(name: str) -> bool:
    import segmentation_models_pytorch as smp

    if name.startswith("tu-"):
        import timm

        return timm.is_model(name[3:])
    return name in smp.encoders.get_encoder_names()


def _crop_size(args: Mapping[str, Any]) -> tuple[int, int] | None:
    if "size" in args and isinstance(args["size"], Sequence) and len(args["size"]) == 2:
        return int(args["size"][0]), int(args["size"][1])
    if args.get("height") is not None and args.get("width") is not None:
        return int(args["height"]), int(args["width"])
    return None


def check_pipeline(
    transforms: Sequence[Any], key: str, image_size: tuple[int, int] | None
) -> list[str]:
    """Crops must fit the images that reach them: original size, then padding and resizing.

    ``image_size`` is the (height, width) the dataset is known to produce, or None;
    with None only what padding/resizing guarantees is known.
    """
    problems = []
    known = image_size  # a lower bound on (height, width) at this point of the pipeline
    origin = "the images" if image_size else None
    for position, step in enumerate(transforms or ()):
        target = _target(step).rsplit(".", 1)[-1]
        args = step if isinstance(step, Mapping) else {}
        if target == "PadIfNeeded":
            low = (int(args.get("min_height") or 0), int(args.get("min_width") or 0))
            known = (max(known[0], low[0]), max(known[1], low[1])) if known else low
            origin = f"{key}[{position}] PadIfNeeded"
        elif target in (
            "Resize",
            "RandomResizedCrop",
            "RandomSizedCrop",
            "CropNonEmptyMaskIfExists",
        ):
            known, origin = _crop_size(args) or known, f"{key}[{position}] {target}"
        elif target == "SmallestMaxSize":
            size = args.get("max_size")
            size = min(size) if isinstance(size, Sequence) else size
            known, origin = (
                ((int(size), int(size)) if size else known),
                f"{key}[{position}] {target}",
            )
        elif target == "LongestMaxSize":
            known, origin = None, None
        elif target in ("RandomRotate90", "Transpose") and known:
            known = (min(known), min(known))
        elif target in (
            "RandomCrop",
            "CenterCrop",
            "Crop",
            "RandomCropNearBBox",
            "AtLeastOneBBoxRandomCrop",
        ):
            size = _crop_size(args)
            if size is None:
                continue
            if args.get("pad_if_needed"):
                known = size
                continue
            if known and (size[0] > known[0] or size[1] > known[1]):
                problems.append(
                    f"{key}[{position}] {target} height={size[0]} width={size[1]} is larger than the "
                    f"images reaching it ({known[0]}x{known[1]}, after {origin}) and pad_if_needed is "
                    f"false (valid: height <= {known[0]}, width <= {known[1]}). Lower the crop, put "
                    f"albumentations.PadIfNeeded(min_height={size[0]}, min_width={size[1]}) before it, "
                    "or set pad_if_needed: true"
                )
            known = size
    return problems


def check_augment(cfg: DictConfig) -> list[str]:
    size = _get(cfg, "data.generate.image_size") or _get(cfg, "data.image_size")
    image_size = (int(size), int(size)) if _is_int(size) else None
    if image_size is None and isinstance(size, Sequence) and len(size) == 2:
        image_size = (int(size[0]), int(size[1]))
    problems = []
    for key in ("augment.train", "augment.val"):
        transforms = _get(cfg, key)
        if isinstance(transforms, Sequence) and not isinstance(transforms, str):
            problems += check_pipeline(list(transforms), key, image_size)
    return problems


def check_speed(cfg: DictConfig) -> list[str]:
    """compile and channels_last are switches (channels_last also null: on for CUDA runs);
    compile_mode counts when compile is on: one of torch.compile's modes."""
    from segexp.model.module import COMPILE_MODES

    problems = []
    for key, valid in (("compile", "true or false"), ("channels_last", "true, false or null")):
        value = _get(cfg, key)  # None: not set (compile off; channels_last decided per device)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{key}={value!r}: must be {valid}")
    mode = _get(cfg, "compile_mode", "default")
    if _get(cfg, "compile") is True and mode not in COMPILE_MODES:
        problems.append(
            f"compile_mode={mode!r}: not a torch.compile mode (valid: {', '.join(COMPILE_MODES)})"
        )
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value in a train config; return None if all is well."""
    problems = []
    seed = _get(cfg, "seed")
    if seed is not None and not _is_int(seed):
        problems.append(f"seed={seed!r}: must be an integer")
    for check in (check_data, check_optim, check_model, check_augment, check_speed):
        problems += check(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
