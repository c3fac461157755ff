"""Loading segexp checkpoints with errors a user can act on.

Trust model. A checkpoint is data, but two things in a ``.ckpt`` could run code:

1. Pickle: ``torch.load(weights_only=False)`` can execute anything the file says.
   segexp loads every checkpoint with ``weights_only=True`` (tensors, numbers,
   strings, lists, dicts only), here and in ``train.py`` (``fit``/``test``), and
   writes only such types, so its own checkpoints always load that way.
2. Config: the model config travels inside (``hyper_parameters``, ``run_config``)
   and is built with ``hydra.utils.instantiate``, which calls whatever ``_target_``
   names. ``load_module`` first checks every ``_target_`` against
   ``TRUSTED_TARGETS`` (segexp, torch.nn/optim, smp, albumentations, Lightning)
   and refuses anything else (``os.system``, ``subprocess.run``, ...).

So loading a checkpoint from someone else cannot run code beyond those
libraries' constructors. It can still hold bad weights: evaluate before you rely
on it. Extend ``TRUSTED_TARGETS`` only for code you trust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segexp.errors import UserError

# Module prefixes a checkpoint's configs may instantiate (see the trust model above).
TRUSTED_TARGETS = (
    "segexp.",
    "torch.nn.",
    "torch.optim.",
    "segmentation_models_pytorch.",
    "albumentations.",
    "pytorch_lightning.",
    "lightning.pytorch.",
)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, untrusted, or does not fit the config."""


def untrusted_targets(node: Any, key: str = "") -> list[str]:
    """``key=_target_`` for every ``_target_`` in a nested config outside TRUSTED_TARGETS."""
    found = []
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(TRUSTED_TARGETS):
            found.append(f"{key or '<root>'}._target_={target}")
        for name, value in node.items():
            found += untrusted_targets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for position, value in enumerate(node):
            found += untrusted_targets(value, f"{key}[{position}]")
    return found


def check_trusted(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose configs would instantiate code outside TRUSTED_TARGETS."""
    bad = untrusted_targets(checkpoint.get("hyper_parameters") or {})
    # Of the run's full config, only the dataset is ever built from a checkpoint (evaluate.py).
    run_config = checkpoint.get("run_config") or {}
    bad += untrusted_targets(run_config.get("data") or {}, "run_config.data")
    if bad:
        raise CheckpointError(
            f"ckpt_path={path} asks to build {', '.join(bad[:5])}, outside the trusted modules "
            f"({', '.join(p.rstrip('.') for p in TRUSTED_TARGETS)}); refusing to run it, since a "
            "checkpoint from an untrusted source could run any code this way. If you wrote this "
            "code and trust the file, add its module to segexp.run.checkpoint.TRUSTED_TARGETS."
        )


def _describe(hparams: Mapping[str, Any]) -> dict[str, Any]:
    net = hparams.get("net") or {}
    return {
        "model._target_": net.get("_target_"),
        "model.arch": net.get("arch"),
        "model.encoder_name": net.get("encoder_name"),
        "data.num_classes": hparams.get("num_classes"),
        "optimizer._target_": (hparams.get("optimizer") or {}).get("_target_"),
    }


def check_compatible(path: str | os.PathLike, module: Any, resume: bool = True) -> None:
    """Raise CheckpointError if ``path`` cannot be loaded into ``module`` (a SegModule).

    Compares the recorded model config (arch, encoder, classes, optimizer when the
    training state is restored) and then every weight's name and shape, so the user
    reads which setting differs instead of a state-dict traceback.
    """
    checkpoint = read_checkpoint(path)
    saved, current = _describe(checkpoint["hyper_parameters"]), _describe(dict(module.hparams))
    keys = [k for k in saved if resume or not k.startswith("optimizer")]
    differ = [
        k
        for k in keys
        if saved[k] is not None and current[k] is not None and saved[k] != current[k]
    ]
    weights = checkpoint["state_dict"]
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights
        and hasattr(weights[k], "shape")
        and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    if not (differ or missing or unexpected or shapes):
        return
    lines = [f"ckpt_path={path} does not fit this config:"]
    lines += [f"  {k}: checkpoint {saved[k]!r}, config {current[k]!r}" for k in differ]
    if shapes:
        lines.append(f"  {len(shapes)} weight(s) differ in shape, e.g. {'; '.join(shapes[:3])}")
    if missing or unexpected:
        lines.append(
            f"  {len(missing)} weight(s) missing from the checkpoint (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    fix = (
        ", ".join(f"{k}={saved[k]}" for k in differ if not k.endswith("_target_"))
        or "the checkpoint's model settings"
    )
    lines.append(
        f"Use a checkpoint trained with the same model and classes, or set {fix} to match it "
        "(to resume a run exactly, use resume=<run folder>)."
    )
    raise CheckpointError("\n".join(lines))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (no code runs from the file)."""
    import torch

    path = Path(path)
    if not str(path) or str(path) in ("None", "???"):
        raise CheckpointError(
            "ckpt_path is not set: pass ckpt_path=<run folder>/checkpoints/last.ckpt"
        )
    if path.is_dir():
        candidate = path / "checkpoints" / "last.ckpt"
        hint = f" (did you mean ckpt_path={candidate}?)" if candidate.is_file() else ""
        raise CheckpointError(f"ckpt_path={path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={path} does not exist; a run's checkpoints are in <run folder>/checkpoints/ "
            "(last.ckpt and best-*.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(
            f"ckpt_path={path} could not be read as a PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Is the file complete?"
        ) from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "net" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={path} is not a segexp checkpoint (no model config inside); "
            "use a checkpoint written by train.py"
        )
    return checkpoint


def load_module(path: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild the SegModule a checkpoint was saved from (its model config travels inside)."""
    from segexp.model.module import SegModule

    checkpoint = read_checkpoint(path)
    check_trusted(checkpoint, path)
    module = SegModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.to(map_location)
