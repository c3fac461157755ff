"""Reading a weights file as a name -> tensor mapping, tensors only: nothing in the file is
instantiated or run. What ``init_from=`` (``segexp.model.transfer``) and the weights
directory's encoder files (``segexp.model.encoder_weights``) share.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segexp.errors import UserError


class PretrainedError(UserError):
    """A weights file that is missing, unreadable, or does not fit the network."""


def read_state_dict(path: str | os.PathLike, key: str = "init_from") -> dict[str, torch.Tensor]:
    """The name -> tensor mapping of a weights file, reading tensors only (no code runs)."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
            hint = f" (did you mean {key}={path / 'checkpoints' / 'last.ckpt'}?)"
        raise PretrainedError(
            f"{key}={path} is not a file{hint}; give a segexp checkpoint (.ckpt), a PyTorch "
            "state dict (.pt/.pth) or a .safetensors file."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for foreign files
        first = str(error).splitlines()[0] if str(error) else ""
        raise PretrainedError(
            f"{key}={path} could not be read as tensors ({type(error).__name__}: {first}). "
            "Only plain state dicts, segexp checkpoints and .safetensors files are read (with "
            "weights_only=True, so a file that needs code to unpickle is refused); re-save it "
            "as torch.save(model.state_dict(), 'weights.pt')."
        ) from error
    # A checkpoint or a training script's save: the weights sit under one of these keys.
    for nested in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(data, Mapping) and isinstance(data.get(nested), Mapping):
            if not any(isinstance(v, torch.Tensor) for v in data.values()):
                data = data[nested]
                break
    if not isinstance(data, Mapping):
        raise PretrainedError(
            f"{key}={path} holds a {type(data).__name__}, not a state dict (name -> tensor)."
        )
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedError(f"{key}={path} holds no tensors (keys: {list(data)[:5]}).")
    return tensors
