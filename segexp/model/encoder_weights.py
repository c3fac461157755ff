"""Encoder weights by name (``model.encoder_weights=imagenet``) that work offline.

``encoder_weights_file`` looks in the weights directory (``paths.weights_dir``, env
``SEGEXP_WEIGHTS_DIR``) for ``<encoder_name>.<weights>.safetensors``, the encoder's own state
dict; without it, smp / timm load from their usual Hugging Face / torch hub caches or
download. ``fetch_encoder_weights`` (``python -m segexp.weights fetch``) fills the directory
on a connected machine, so it can be copied to one that is not. The network builder is
passed in (``segexp.model.networks`` calls this module, not the other way round).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexp.errors import UserError
from segexp.model.state_dict import PretrainedError, read_state_dict

log = logging.getLogger(__name__)

WEIGHTS_ENV = "SEGEXP_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "weights"
# Set while a checkpoint rebuilds its network: its weights replace the encoder's anyway.
_skip: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_encoder_weights", default=False)
FETCH_HINT = "python -m segexp.weights fetch model={model} model.encoder_name={encoder}"


def use_weights_dir(path: str | os.PathLike | None) -> None:
    """Make ``path`` (``paths.weights_dir``) the weights directory of this process and its
    children (DDP workers read the same variable)."""
    if path:
        os.environ[WEIGHTS_ENV] = str(Path(path).expanduser())


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def weights_file(encoder_name: str, weights: Any, root: str | os.PathLike | None = None) -> Path:
    """Where the weights directory (``root``, default ``weights_dir()``) keeps the encoder
    state dict of ``encoder_name`` with ``weights``: ``<encoder_name>.<weights>.safetensors``."""
    tag = "pretrained" if weights is True else str(weights)
    name = f"{encoder_name}.{tag}.safetensors".replace("/", "_")
    return (Path(root) if root is not None else weights_dir()) / name


def library_sources(encoder_name: str, weights: Any) -> list[str]:
    """Where smp / timm look for these weights in their caches (for messages), e.g.
    ``Hugging Face cache <dir>: smp-hub/resnet18.imagenet/model.safetensors``."""
    try:
        from huggingface_hub import constants

        hf_cache = constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover - smp depends on it
        hf_cache = "the Hugging Face cache"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if encoder_name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        except Exception:  # noqa: BLE001 - an unknown name fails later with its own error
            cfg = None
        places = []
        if cfg is not None and cfg.hf_hub_id:
            places.append(f"Hugging Face cache {hf_cache}: {cfg.hf_hub_id}")
        if cfg is not None and cfg.url:
            places.append(f"torch hub cache {hub / Path(cfg.url).name}")
        return places or [f"timm's caches ({hf_cache}, {hub})"]
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if settings:
        return [f"Hugging Face cache {hf_cache}: {settings['repo_id']}/model.safetensors"]
    return [f"Hugging Face cache {hf_cache}"]


def library_cached(encoder_name: str, weights: Any) -> bool | None:
    """Whether smp / timm have these weights in their caches (None: cannot tell)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    if encoder_name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        except Exception:  # noqa: BLE001
            return None
        if cfg is None:
            return None
        if cfg.hf_hub_id:
            repo, _, _ = cfg.hf_hub_id.partition("@")
            for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
                if filename and isinstance(try_to_load_from_cache(repo, filename), str):
                    return True
        if cfg.url and (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file():
            return True
        return False
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if not settings:
        return None
    found = try_to_load_from_cache(
        settings["repo_id"], "model.safetensors", revision=settings["revision"]
    )
    return isinstance(found, str)


def offline() -> bool:
    """True when Hugging Face's offline switch is on (``HF_HUB_OFFLINE=1``): no download is
    attempted, only the weights directory and the caches are read."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on")


def check_weights_name(encoder_name: str, weights: Any) -> None:
    """Refuse a weights name smp does not know for this encoder, listing the ones it does."""
    if encoder_name.startswith("tu-"):
        return  # timm: the pretrained tag is part of the name (tu-<model>.<tag>)
    from segmentation_models_pytorch.encoders import encoders

    if encoder_name not in encoders:
        return  # build_model's own error names the encoders
    available = list(encoders[encoder_name].get("pretrained_settings", {}))
    if weights not in available:
        raise PretrainedError(
            f"model.encoder_weights={weights!r} is not offered for encoder {encoder_name!r}; "
            f"available: {', '.join(available) or 'none (train from scratch: null)'}."
        )


def missing_weights_error(
    encoder_name: str, weights: Any, arch: str | None = None, cause: BaseException | None = None
) -> PretrainedError:
    """The one error for encoder weights that are neither in the weights directory nor in
    the caches, and cannot be downloaded: where each was looked for, and the fetch command."""
    wanted = weights_file(encoder_name, weights, None)
    places = "; ".join(library_sources(encoder_name, weights))
    fetch = FETCH_HINT.format(model=arch or "<model>", encoder=encoder_name)
    if weights not in (True, "imagenet"):
        fetch += f" model.encoder_weights={weights}"
    why = (
        "HF_HUB_OFFLINE is set"
        if offline()
        else f"the download failed ({type(cause).__name__}: {str(cause).splitlines()[0] if cause and str(cause) else ''})"
    )
    return PretrainedError(
        f"model.encoder_weights={weights!r} for encoder {encoder_name!r}: looked for "
        f"{wanted} (the weights directory: paths.weights_dir / ${WEIGHTS_ENV}), then in "
        f"{places}; found nothing, and {why}. On a machine with network run `{fetch}`, copy "
        f"the weights directory here and point paths.weights_dir (or ${WEIGHTS_ENV}) at it; "
        "or set model.encoder_weights=null to train from scratch."
    )


def encoder_weights_file(encoder_name: str, weights: Any, arch: str | None = None) -> Path | None:
    """The weights-directory file for these encoder weights, or None when smp / timm should
    load them themselves (from their caches, or by downloading when online).

    Raises the missing-weights PretrainedError at once when offline (``HF_HUB_OFFLINE``)
    and neither the directory nor the caches hold them."""
    path = weights_file(encoder_name, weights, None)
    if path.is_file():
        return path
    check_weights_name(encoder_name, weights)
    if offline() and not library_cached(encoder_name, weights):
        raise missing_weights_error(encoder_name, weights, arch)
    return None


def _is_download_error(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a failed download."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        module = type(current).__module__ or ""
        if isinstance(current, (OSError, ConnectionError, TimeoutError)) or module.startswith(
            ("huggingface_hub", "requests", "urllib3", "httpx", "httpcore", "urllib")
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def load_encoder_file(encoder: nn.Module, path: str | os.PathLike, in_channels: int = 3) -> None:
    """Load an encoder state dict saved by ``fetch_encoder_weights`` into ``encoder``.

    The file holds the 3-channel encoder at full depth: deeper stages the configured depth
    dropped are ignored, and for ``in_channels != 3`` the first convolution is adapted as
    smp does (summed for 1 channel, else the RGB filters cycled and scaled by 3 / C).
    Missing tensors mean the file was fetched for another model: an error saying so.
    """
    source = read_state_dict(path, key="model.encoder_weights")
    own = encoder.state_dict()
    missing = [k for k in own if k not in source]
    if missing:
        raise PretrainedError(
            f"{path} does not fit this encoder: {len(missing)} tensors missing (e.g. "
            f"{missing[:3]}). It was fetched for another model; fetch it again with this "
            "model config (python -m segexp.weights fetch model=... model.encoder_name=...)."
        )
    load = {}
    for name, tensor in own.items():
        value = source[name]
        if tuple(value.shape) != tuple(tensor.shape):
            value = _adapt_first_conv(value, tensor)
            if value is None:
                raise PretrainedError(
                    f"{path}: tensor {name} has shape {tuple(source[name].shape)}, the encoder "
                    f"{tuple(tensor.shape)}; fetch the weights again for this model config."
                )
        load[name] = value
    with torch.no_grad():
        encoder.load_state_dict(load, strict=True)


def _adapt_first_conv(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """An RGB conv weight (O, 3, k, k) made to fit (O, C, k, k), as smp's patch_first_conv."""
    if value.dim() != 4 or target.dim() != 4 or value.shape[1] != 3:
        return None
    if (value.shape[0], *value.shape[2:]) != (target.shape[0], *target.shape[2:]):
        return None
    channels = target.shape[1]
    if channels == 1:
        return value.sum(dim=1, keepdim=True)
    index = torch.arange(channels) % 3
    return value[:, index] * (3.0 / channels)


def build_with_encoder_weights(
    build: Callable[..., nn.Module],
    arch: str,
    encoder_name: str,
    weights: Any,
    in_channels: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """``build(arch, encoder_name, encoder_weights, in_channels, **kwargs)`` with pretrained
    encoder weights: from the weights directory when it has them (the net is built without
    weights, then the file is loaded into ``net.encoder``), else by smp / timm from their
    caches or a download; a failed download is the missing-weights PretrainedError."""
    if _skip.get():
        return build(arch, encoder_name, None, in_channels, **kwargs)
    path = encoder_weights_file(encoder_name, weights, arch)
    if path is not None:
        net = build(arch, encoder_name, None, in_channels, **kwargs)
        load_encoder_file(net.encoder, path, in_channels)
        log.info("encoder weights %s: %s", weights, path)
        return net
    try:
        return build(arch, encoder_name, weights, in_channels, **kwargs)
    except UserError:
        raise
    except Exception as error:
        if _is_download_error(error):
            raise missing_weights_error(encoder_name, weights, arch, error) from error
        raise


@contextlib.contextmanager
def skip_encoder_weights() -> Iterator[None]:
    """Build networks without their pretrained encoder weights inside this block: for a
    network whose weights come next from a checkpoint, so no lookup or download happens."""
    token = _skip.set(True)
    try:
        yield
    finally:
        _skip.reset(token)


def fetch_encoder_weights(
    build: Callable[..., nn.Module],
    model_cfg: Mapping[str, Any],
    root: str | os.PathLike | None = None,
) -> Path:
    """Build ``model_cfg``'s network with ``build`` (``segexp.model.networks.build_network``)
    and its pretrained encoder weights the usual way (smp / timm: their caches or a download)
    and save the encoder's state dict as ``<root>/<encoder_name>.<weights>.safetensors``, the
    file ``encoder_weights_file`` finds.

    The encoder is built with 3 input channels (other counts are adapted when loading).
    """
    from safetensors.torch import save_file

    args = {k: v for k, v in model_cfg.items() if k != "_target_"}
    weights = args.get("encoder_weights")
    encoder_name = args.get("encoder_name", "resnet18")
    if weights is None:
        raise PretrainedError(
            "model.encoder_weights is null: name the weights to fetch, e.g. "
            "model.encoder_weights=imagenet."
        )
    check_weights_name(encoder_name, weights)
    args["in_channels"] = 3
    try:
        net = build(**args)
    except UserError:
        raise
    except Exception as error:
        if _is_download_error(error):
            raise PretrainedError(
                f"could not download {weights!r} weights for encoder {encoder_name!r} "
                f"({type(error).__name__}: {error}); this command needs network access."
            ) from error
        raise
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.encoder.state_dict().items()}
    path = weights_file(encoder_name, weights, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"encoder_name": encoder_name, "weights": str(weights)})
    os.replace(tmp, path)
    return path
