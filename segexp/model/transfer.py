"""``init_from=<file>``: copy the tensors of a weights file into a freshly built network
before training.

The file is a segexp ``.ckpt``, a plain PyTorch state dict (``.pt``/``.pth``, possibly nested
under ``state_dict`` or ``model``) or a ``.safetensors`` file. Only tensors are read
(``segexp.model.state_dict``): no optimizer, scheduler, epoch or RNG state is taken. Tensors
whose names and shapes match are loaded; the rest keep their fresh initialisation, and the
``TransferReport`` says which and why.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segexp.model.networks import PadToMultiple
from segexp.model.state_dict import PretrainedError, read_state_dict

log = logging.getLogger(__name__)

PARTS = ("all", "encoder")
# Prefixes a source file's names may carry in front of the network's own names: a segexp
# checkpoint (SegModule.net = PadToMultiple, whose .net is the network), an older one
# without the padding wrapper, a DDP/DataParallel save (module.), other trainers (model.).
SOURCE_PREFIXES = ("", "net.net.", "net.", "module.net.net.", "module.", "model.", "model.net.")


def target_network(module: nn.Module) -> nn.Module:
    """The segmentation network inside a SegModule (``.net``) and its PadToMultiple (``.net``)."""
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
