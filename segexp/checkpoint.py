"""Loading segexp checkpoints with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a segexp checkpoint."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (no code runs from the file)."""
    import torch

    path = Path(path)
    if not str(path) or str(path) in ("None", "???"):
        raise CheckpointError("ckpt_path is not set: pass ckpt_path=<run folder>/checkpoints/last.ckpt")
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
    from segexp.module import SegModule

    checkpoint = read_checkpoint(path)
    module = SegModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.to(map_location)
