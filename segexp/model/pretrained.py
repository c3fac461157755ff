"""Starting from pretrained weights: ``init_from=<file>`` and offline encoder weights.

Two things live here:

1. ``init_network`` (``init_from=``): copy the tensors of a weights file into a freshly
   built network before training. The file is a segexp ``.ckpt``, a plain PyTorch state
   dict (``.pt``/``.pth``, possibly nested under ``state_dict`` or ``model``) or a
   ``.safetensors`` file. Only tensors are read (``torch.load(weights_only=True)`` or
   safetensors): nothing in the file is instantiated or run, and no optimizer, scheduler,
   epoch or RNG state is taken. Tensors whose names and shapes match are loaded; the rest
   keep their fresh initialisation, and the ``TransferReport`` says which and why.

2. Encoder weights by name (``model.encoder_weights=imagenet``) that work offline:
   ``encoder_weights_file`` looks in the weights directory (``paths.weights_dir``, env
   ``SEGEXP_WEIGHTS_DIR``) for ``<encoder_name>.<weights>.safetensors``, the encoder's
   own state dict; without it, smp / timm load from their usual Hugging Face / torch hub
   caches or download. ``fetch_encoder_weights`` (``python -m segexp.weights fetch``)
   fills the directory on a connected machine, so it can be copied to one that is not.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexp.errors import UserError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "SEGEXP_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "weights"
PARTS = ("all", "encoder")
# Set while a checkpoint rebuilds its network: its weights replace the encoder's anyway.
_skip: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_encoder_weights", default=False)
# Prefixes a source file's names may carry in front of the network's own names: a segexp
# checkpoint (SegModule.net = PadToMultiple, whose .net is the network), an older one
# without the padding wrapper, a DDP/DataParallel save (module.), other trainers (model.).
SOURCE_PREFIXES = ("", "net.net.", "net.", "module.net.net.", "module.", "model.", "model.net.")
FETCH_HINT = "python -m segexp.weights fetch model={model} model.encoder_name={encoder}"


class PretrainedError(UserError):
    """A weights file that is missing, unreadable, or does not fit the network."""


# ---------------------------------------------------------------------------- init_from=


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


def target_network(module: nn.Module) -> nn.Module:
    """The segmentation network inside a SegModule (``.net``) and its PadToMultiple (``.net``)."""
    from segexp.model.networks import PadToMultiple

    net = module
    if isinstance(getattr(net, "net", None), nn.Module) and not isinstance(net, PadToMultiple):
        net = net.net  # SegModule -> PadToMultiple
    if isinstance(net, PadToMultiple):
        net = net.net
    return net


def _rename(source: Mapping[str, Any], targets: set[str]) -> tuple[str, str, dict[str, Any]]:
    """(prefix stripped, prefix added, renamed source) that matches most target names."""
    best = ("", "", {})
    best_hits = -1
    for strip in SOURCE_PREFIXES:
        for add in ("", "encoder."):
            renamed = {add + k[len(strip) :]: v for k, v in source.items() if k.startswith(strip)}
            hits = sum(1 for k in renamed if k in targets)
            if hits > best_hits:
                best, best_hits = (strip, add, renamed), hits
    return best


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


@dataclass
class TransferReport:
    """What ``init_network`` did: loaded tensors and the skipped ones with their reason."""

    path: str
    part: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)  # "name: file (..) vs network (..)"
    missing: list[str] = field(default_factory=list)  # in the network, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the network
    outside_part: int = 0  # network tensors kept fresh because init_from_part=encoder
    ignored: int = 0  # file tensors outside the network (a checkpoint's metric states)
    prefix: str = ""  # how file names were mapped onto the network's ("net.net." -> "")

    @property
    def skipped(self) -> list[str]:
        return [*self.shape_mismatch, *self.missing, *self.unexpected]

    def text(self, limit: int = 20) -> str:
        """The printed report: counts, then the skipped tensors by reason."""
        total = len(self.loaded) + len(self.shape_mismatch) + len(self.missing)
        lines = [
            f"init_from={self.path}: loaded {len(self.loaded)} of {total} tensors "
            f"(init_from_part={self.part}{', names mapped ' + self.prefix if self.prefix else ''})"
        ]
        if self.outside_part:
            lines.append(
                f"  {self.outside_part} tensors outside the encoder keep their fresh init "
                "(init_from_part=encoder)"
            )
        for title, names in (
            ("shape mismatch (kept fresh init)", self.shape_mismatch),
            ("missing in the file (kept fresh init)", self.missing),
            ("unexpected (in the file, not in this network; ignored)", self.unexpected),
        ):
            if names:
                lines.append(f"  skipped, {title}: {len(names)}")
                lines += [f"    {name}" for name in names[:limit]]
                if len(names) > limit:
                    lines.append(f"    ... and {len(names) - limit} more")
        if self.ignored:
            lines.append(f"  {self.ignored} file tensors outside the network ignored")
        return "\n".join(lines)

    def emit(self) -> None:
        """Log the report (console, and the run folder's log file under Hydra)."""
        log.info("%s", self.text())

    def record(self) -> dict[str, Any]:
        """What run_info.json keeps (with the file's path and sha256, see ``file_record``)."""
        return {
            "part": self.part,
            "loaded": len(self.loaded),
            "shape_mismatch": self.shape_mismatch,
            "missing": self.missing,
            "unexpected": self.unexpected,
        }


def match_weights(
    network: nn.Module,
    source: Mapping[str, torch.Tensor],
    path: str = "",
    part: str = "all",
) -> tuple[TransferReport, dict[str, torch.Tensor]]:
    """(report, tensors to load) for ``source`` into ``network``'s state dict."""
    if part not in PARTS:
        raise PretrainedError(f"init_from_part={part!r}: choose one of {', '.join(PARTS)}.")
    own = network.state_dict()
    wanted = {k: v for k, v in own.items() if part == "all" or k.startswith("encoder.")}
    if not wanted:
        raise PretrainedError(
            f"init_from_part={part}: {type(network).__name__} has no parameters under "
            "'encoder.'; use init_from_part=all."
        )
    strip, add, renamed = _rename(source, set(wanted))
    report = TransferReport(path=str(path), part=part, outside_part=len(own) - len(wanted))
    if strip or add:
        report.prefix = f"{strip or '<none>'!r} -> {add or '<none>'!r}"
    report.ignored = len(source) - len(renamed)
    load: dict[str, torch.Tensor] = {}
    for name, tensor in wanted.items():
        if name not in renamed:
            report.missing.append(name)
        elif _shape(renamed[name]) != _shape(tensor):
            report.shape_mismatch.append(
                f"{name}: file {_shape(renamed[name])} vs network {_shape(tensor)}"
            )
        else:
            load[name] = renamed[name]
            report.loaded.append(name)
    for name in renamed:
        if name in wanted:
            continue
        if name not in own:  # (a network tensor outside the requested part is not taken)
            report.unexpected.append(name)
    return report, load


def init_network(
    module: nn.Module,
    path: str | os.PathLike,
    part: str = "all",
    strict: bool = False,
) -> TransferReport:
    """Load the matching tensors of ``path`` into the network of ``module`` (a SegModule,
    a PadToMultiple or a bare network); the rest keep their fresh init.

    ``part="encoder"`` restricts loading to the tensors under ``encoder.``; ``strict``
    refuses any skipped tensor (shape mismatch, missing, unexpected) with a PretrainedError
    that lists them. Raises too when nothing matches (the wrong file, surely).
    """
    network = target_network(module)
    source = read_state_dict(path)
    report, load = match_weights(network, source, str(path), part)
    if not load:
        own = list(network.state_dict())
        raise PretrainedError(
            f"init_from={path}: no tensor matches the network by name and shape "
            f"(file names look like {list(source)[:3]}, the network's like {own[:3]}; "
            f"{len(report.shape_mismatch)} names match with another shape). Use weights of the "
            "same architecture and encoder (model=..., model.encoder_name=...)."
        )
    if strict and report.skipped:
        raise PretrainedError(
            f"init_from_strict=true but not every tensor fits:\n{report.text(limit=50)}\n"
            "Set init_from_strict=false to load what fits (the rest keep their fresh init), "
            "or init_from_part=encoder to take the encoder only."
        )
    with torch.no_grad():
        # load_state_dict copies into the existing tensors: their device, dtype and
        # memory format (channels_last) are kept.
        network.load_state_dict(load, strict=False)
    return report


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike, report: TransferReport | None = None) -> dict[str, Any]:
    """The run_info.json entry of an ``init_from`` file: absolute path, sha256, report."""
    record = {"path": str(Path(path).resolve()), "sha256": sha256(path)}
    if report is not None:
        record.update(report.record())
    return record


# ------------------------------------------------------------------- encoder weights


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
        if _shape(value) != _shape(tensor):
            value = _adapt_first_conv(value, tensor)
            if value is None:
                raise PretrainedError(
                    f"{path}: tensor {name} has shape {_shape(source[name])}, the encoder "
                    f"{_shape(tensor)}; fetch the weights again for this model config."
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
    model_cfg: Mapping[str, Any], root: str | os.PathLike | None = None
) -> Path:
    """Build ``model_cfg``'s network with its pretrained encoder weights the usual way (smp /
    timm: their caches or a download) and save the encoder's state dict as
    ``<root>/<encoder_name>.<weights>.safetensors``, the file ``encoder_weights_file`` finds.

    The encoder is built with 3 input channels (other counts are adapted when loading).
    """
    from safetensors.torch import save_file

    from segexp.model.networks import _build_network

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
        net = _build_network(**args)
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


def init_from_config(cfg: Any, module: nn.Module) -> TransferReport | None:
    """Apply ``init_from`` / ``init_from_part`` / ``init_from_strict`` of a train config to
    ``module`` (every DDP rank calls this before fit). None when unset, or when ``ckpt_path``
    is set too: that checkpoint restores every weight (a resumed run must not need the
    file it started from)."""
    path = cfg.get("init_from")
    if not path:
        return None
    if cfg.get("ckpt_path"):
        log.info("init_from=%s not applied: ckpt_path=%s restores the weights", path, cfg.ckpt_path)
        return None
    part = str(cfg.get("init_from_part") or "all")
    return init_network(module, path, part=part, strict=bool(cfg.get("init_from_strict", False)))
