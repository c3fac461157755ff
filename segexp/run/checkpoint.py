"""Loading segexp checkpoints with errors a user can act on.

Trust model. A checkpoint is data, but two things in a ``.ckpt`` could run code:

1. Pickle: ``torch.load(weights_only=False)`` can execute anything the file says.
   segexp loads every checkpoint with ``weights_only=True`` (tensors, numbers,
   strings, lists, dicts only), here and in ``train.py`` (``fit``/``test``), and
   writes only such types, so its own checkpoints always load that way.
2. Config: the model config travels inside (``hyper_parameters``, ``run_config``)
   and is built with ``hydra.utils.instantiate``, which calls whatever ``_target_``
   names. ``check_trusted`` resolves every ``_target_`` to the object it names the
   way Hydra does (import the module part, ``getattr`` the rest) without calling
   anything, and accepts it only if that very object (``is``) is one of
   ``allowed_callables()``: segexp's builders, losses, data module and datasets,
   albumentations transforms, torch optimizers and losses, smp architectures. A
   name is never trusted for its prefix: ``segexp.run.checkpoint.os.system`` names
   ``os.system`` and is refused. A target whose top-level module is not one of
   ``KNOWN_PACKAGES`` is refused before anything is imported. Also refused:
   non-string targets, ``_args_``, ``_recursive_``, ``_convert_`` and any other
   underscore key, and ``${...}`` interpolations (a resolver such as ``oc.decode``
   could build a ``_target_`` the check never saw).

So loading a checkpoint from someone else cannot run code beyond those
constructors. It can still hold bad weights: evaluate before you rely on it.

Your own classes. Trust is decided by whoever loads, never by the file: the loading
command's ``trust=[mylab]`` (or the user project's own package, ``segexp.project``)
names packages whose classes and functions a checkpoint may build too. A target is
accepted only if the object it resolves to is a class or function *defined in* one of
those packages (its own ``__module__``): ``mylab.os.system`` is ``os.system`` and is
still refused. A checkpoint that lists packages to trust inside itself gains nothing:
nothing in the file is read for that.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from segexp.errors import UserError

# Top-level modules a checkpoint's ``_target_`` may name; any other is refused unimported.
KNOWN_PACKAGES = frozenset({"segexp", "torch", "segmentation_models_pytorch", "albumentations"})
# Hydra keys a checkpoint's config may use; every other ``_name_`` key is refused.
HYDRA_KEYS = frozenset({"_target_", "_partial_"})
# Arguments that name a class by dotted path (``build_optimizer`` imports it itself).
DOTTED_PATH_ARGS = frozenset({"optimizer_class"})
# albumentations transforms that take callables or read files; never built from a checkpoint.
UNSAFE_TRANSFORMS = frozenset(
    {
        "Lambda",
        "FDA",
        "HistogramMatching",
        "PixelDistributionAdaptation",
        "TemplateTransform",
        "TextImage",
        "OverlayElements",
        "Mosaic",
        "Equalize",
    }
)


# The packages a refusal names: ``module 'mylab' is not one segexp builds checkpoints from``.
_UNTRUSTED_MODULE = re.compile(r"module '([A-Za-z_][A-Za-z0-9_]*)' is not one segexp builds")


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, untrusted, or does not fit the config."""


class _Refused(Exception):
    """Why one ``_target_`` is not trusted (becomes part of a CheckpointError)."""


def trusted_packages(cfg: Any) -> list[str]:
    """The packages a command trusts: ``trust=[...]`` from its config or command line, plus
    the user project's own package when it runs inside one (``segexp.project``)."""
    from segexp.project import find_project

    names = [str(name) for name in (cfg.get("trust") or [])]
    bad = [name for name in names if not all(part.isidentifier() for part in name.split("."))]
    if bad:
        raise CheckpointError(
            f"trust={names}: {bad[0]!r} is not a Python package name; give importable names, "
            "e.g. trust=[mylab]"
        )
    project = find_project()
    names += project.trusted if project is not None else []
    return sorted(set(names))


def _in_packages(module: str, packages: Sequence[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _defined_in(obj: Any, packages: Sequence[str]) -> bool:
    """True when ``obj`` is a class or function whose own module is in ``packages``: a
    re-export (``mylab.os.system``) keeps the module it was defined in and is not."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and _in_packages(module, packages)


def _classes(module: ModuleType, base: type, skip: frozenset[str] = frozenset()) -> list[type]:
    return [
        value
        for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, base) and name not in skip
    ]


@functools.cache
def allowed_callables() -> dict[int, Any]:
    """``id -> object`` of every callable a checkpoint's config may name (compared with ``is``)."""
    import albumentations
    import segmentation_models_pytorch as smp
    import torch
    from albumentations.core.transforms_interface import BasicTransform

    from segexp.data import datasets, shapes
    from segexp.data.datamodule import SegDataModule
    from segexp.model import losses, networks, optim

    allowed: list[Any] = [
        networks.build_model,
        networks.FCN,
        optim.build_optimizer,
        optim.poly,
        optim.cosine,
        optim.onecycle,
        losses.CrossEntropyLoss,
        losses.DiceLoss,
        losses.TverskyLoss,
        losses.FocalLoss,
        losses.LovaszSoftmaxLoss,
        losses.WeightedSum,
        SegDataModule,
        datasets.FolderDataset,
        datasets.VOCDataset,
        datasets.COCODataset,
        datasets.CityscapesDataset,
        datasets.ADE20KDataset,
        shapes.generate_shapes,
        *smp.MODEL_ARCHITECTURES_MAPPING.values(),
        *_classes(albumentations, BasicTransform, UNSAFE_TRANSFORMS),
        *_classes(torch.optim, torch.optim.Optimizer, frozenset({"Optimizer"})),
        *_classes(torch.nn, torch.nn.modules.loss._Loss),
    ]
    return {id(obj): obj for obj in allowed}


def resolve_target(target: str, trust: Sequence[str] = ()) -> Any:
    """The object a dotted ``_target_`` names, found as Hydra finds it, without calling it.

    Raises _Refused for a module outside KNOWN_PACKAGES and ``trust`` (before importing
    it) or a name that does not resolve.
    """
    parts = target.split(".")
    if not all(part.isidentifier() for part in parts):
        raise _Refused("it is not a dotted Python name")
    if parts[0] not in KNOWN_PACKAGES and not _in_packages(target, trust):
        raise _Refused(
            f"module {parts[0]!r} is not one segexp builds checkpoints from "
            f"({', '.join(sorted(KNOWN_PACKAGES))}) nor one this command trusts "
            f"(trust={list(trust)})"
        )
    try:
        obj: Any = importlib.import_module(parts[0])
        for position in range(1, len(parts)):
            try:
                obj = getattr(obj, parts[position])
            except AttributeError:
                if not isinstance(obj, ModuleType):
                    raise
                obj = importlib.import_module(".".join(parts[: position + 1]))
    except Exception as error:  # ImportError, AttributeError, or an import that fails oddly
        raise _Refused(f"it does not resolve ({type(error).__name__}: {error})") from None
    return obj


def _describe_object(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if module and name else type(obj).__name__


def _check_target(target: Any, allowed: Mapping[int, Any], trust: Sequence[str]) -> None:
    if not isinstance(target, str):
        raise _Refused(f"a _target_ must be a dotted name, not a {type(target).__name__}")
    obj = resolve_target(target, trust)
    if allowed.get(id(obj)) is obj or _defined_in(obj, trust):
        return
    trusted = f" or a class or function defined in {', '.join(trust)}" if trust else ""
    raise _Refused(
        f"it names {_describe_object(obj)}, which is not one of the callables segexp builds "
        "from a checkpoint (model builders, losses, optimizers and schedulers, the data module, "
        f"datasets, albumentations transforms){trusted}"
    )


def _problems(
    node: Any, key: str, allowed: Mapping[int, Any], trust: Sequence[str]
) -> Iterator[str]:
    """``key: why`` for everything in a nested config that instantiating it could misuse."""
    if isinstance(node, str):
        if "${" in node:
            yield f"{key}={node!r}: an interpolation, which could build code when resolved"
        return
    if isinstance(node, (list, tuple)):
        for position, value in enumerate(node):
            yield from _problems(value, f"{key}[{position}]", allowed, trust)
        return
    if not isinstance(node, Mapping):
        return
    for name, value in node.items():
        path = f"{key}.{name}" if key else str(name)
        if not isinstance(name, str):
            yield f"{path}: a non-string key"
            continue
        if "${" in name:
            yield f"{path}: an interpolation in a key"
        elif name == "_target_":
            try:
                _check_target(value, allowed, trust)
            except _Refused as why:
                yield f"{path}={value!r}: {why}"
        elif name == "_partial_":
            if not isinstance(value, bool):
                yield f"{path}={value!r}: _partial_ must be true or false"
            elif "_target_" not in node:
                yield f"{path}: _partial_ without a _target_"
        elif name.startswith("_") and name.endswith("_"):
            yield (
                f"{path}: Hydra's {name} is not used by segexp configs and could change what "
                "gets called"
            )
        elif name in DOTTED_PATH_ARGS and "_target_" in node:
            try:
                _check_target(value, allowed, trust)
            except _Refused as why:
                yield f"{path}={value!r}: {why}"
        yield from _problems(value, path, allowed, trust)


def untrusted_targets(node: Any, key: str = "", trust: Sequence[str] = ()) -> list[str]:
    """Every problem (``key: why``) in a nested config that would make instantiating it unsafe."""
    return list(_problems(node, key, allowed_callables(), tuple(trust)))


def check_trusted(
    checkpoint: Mapping[str, Any], path: str | os.PathLike, trust: Sequence[str] = ()
) -> None:
    """Refuse a checkpoint whose configs would instantiate anything but ``allowed_callables()``
    and the classes and functions defined in the ``trust`` packages."""
    bad = untrusted_targets(checkpoint.get("hyper_parameters") or {}, "hyper_parameters", trust)
    # Of the run's full config, only the dataset is ever built from a checkpoint (evaluate.py).
    run_config = checkpoint.get("run_config") or {}
    if not isinstance(run_config, Mapping):
        bad.append(f"run_config: a {type(run_config).__name__}, not a config")
    else:
        bad += untrusted_targets(run_config.get("data") or {}, "run_config.data", trust)
    if bad:
        listed = "\n  ".join(bad[:5]) + (f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        packages = sorted({m for m in _UNTRUSTED_MODULE.findall("\n".join(bad))})
        fix = (
            f"if the file is yours and builds your own code, add trust=[{','.join(packages)}] to "
            "the command line (or run inside your segexp project, which trusts its own package)"
            if packages
            else "use a checkpoint written by segexp train"
        )
        raise CheckpointError(
            f"ckpt_path={path} is untrusted: its config asks to build\n  {listed}\n"
            "Refusing to load it, since a checkpoint from an untrusted source could run any code "
            f"this way; {fix}. Trust comes from the command that loads, never from the file."
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


def load_module(path: str | os.PathLike, map_location: str = "cpu", trust: Sequence[str] = ()):
    """Rebuild the SegModule a checkpoint was saved from (its model config travels inside);
    ``trust``: packages whose own classes and functions it may build (``trusted_packages``)."""
    from segexp.model.encoder_weights import skip_encoder_weights
    from segexp.model.module import SegModule

    checkpoint = read_checkpoint(path)
    check_trusted(checkpoint, path, trust)
    with skip_encoder_weights():  # the checkpoint's weights replace them: no lookup, no download
        module = SegModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.to(map_location)
