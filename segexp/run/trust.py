"""What a checkpoint's config may build: a schema of slots, each with its own allowlist.

A checkpoint is data. Its model side (``hyper_parameters``) is built with
``hydra.utils.instantiate``, so every ``_target_`` in it is resolved to the object it names
the way Hydra does (import the module part, ``getattr`` the rest) without calling anything,
and accepted only if that very object (``is``) is on the list of the *slot* it sits in
(``SLOTS``): ``net`` builds networks, ``loss`` losses, ``optimizer`` optimizers,
``scheduler`` schedules, and nothing else anywhere. Every entry is a pure constructor: no
file written, no process or socket, no work beyond building the object (``build_model``
runs under ``skip_encoder_weights``, so it never looks weights up). Nothing that writes
(``segexp.data.shapes.generate_shapes``) is on any list.

The data side (``run_config.data``) is never built as it stands: ``checkpoint_data`` reads
it as plain data (root, classes, splits, normalisation, the dataset class by identity and
its plain arguments, albumentations transforms from the ``transforms`` slot) and returns a
config whose module is fixed by code. Its ``generate`` entry is a record of how a dataset
was drawn, never run; where a dataset writes (``cache_dir``) is never taken from the file.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

# Top-level modules a checkpoint's ``_target_`` may name; any other is refused unimported.
KNOWN_PACKAGES = frozenset({"segexp", "torch", "segmentation_models_pytorch", "albumentations"})
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
# The model-side slots of a checkpoint (``hyper_parameters.<slot>``) that may hold targets;
# every other hyper-parameter is plain data.
MODEL_SLOTS = ("net", "loss", "optimizer", "scheduler")
# Plain fields of a checkpoint's data config that are reused; the rest comes from the command.
DATA_FIELDS = (
    "root",
    "num_classes",
    "ignore_index",
    "class_names",
    "train_split",
    "val_split",
    "test_split",
    "on_bad_sample",
    "mean",
    "std",
    "batch_size",
    "pad_to_multiple",
    "seed",
)
TRANSFORM_FIELDS = ("train_transforms", "val_transforms")
# Dataset arguments never taken from a checkpoint: where a dataset writes.
WRITE_ARGS = frozenset({"cache_dir"})
DATA_MODULE = "segexp.data.datamodule.SegDataModule"

# The packages a refusal names: ``module 'mylab' is not one segexp builds checkpoints from``.
UNTRUSTED_MODULE = re.compile(r"module '([A-Za-z_][A-Za-z0-9_]*)' is not one segexp builds")


class Refused(Exception):
    """Why one ``_target_`` is not trusted (becomes part of a CheckpointError)."""


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
def allowed_callables() -> dict[str, dict[int, Any]]:
    """``slot -> {id: object}``: what a checkpoint's config may name in each slot (``is``)."""
    import albumentations
    import torch
    from albumentations.core.transforms_interface import BasicTransform

    from segexp.data import datasets
    from segexp.model import losses, networks, optim

    slots: dict[str, list[Any]] = {
        "net": [networks.build_model],
        "loss": [
            losses.CrossEntropyLoss,
            losses.DiceLoss,
            losses.TverskyLoss,
            losses.FocalLoss,
            losses.LovaszSoftmaxLoss,
            losses.WeightedSum,
            *_classes(torch.nn, torch.nn.modules.loss._Loss),
        ],
        "optimizer": [
            optim.build_optimizer,
            *_classes(torch.optim, torch.optim.Optimizer, frozenset({"Optimizer"})),
        ],
        "scheduler": [optim.poly, optim.cosine, optim.onecycle],
        "dataset": [
            datasets.FolderDataset,
            datasets.VOCDataset,
            datasets.COCODataset,
            datasets.CityscapesDataset,
            datasets.ADE20KDataset,
        ],
        "transforms": _classes(albumentations, BasicTransform, UNSAFE_TRANSFORMS),
    }
    return {slot: {id(obj): obj for obj in objs} for slot, objs in slots.items()}


def resolve_target(target: str, trust: Sequence[str] = ()) -> Any:
    """The object a dotted ``_target_`` names, found as Hydra finds it, without calling it.

    Raises Refused for a module outside KNOWN_PACKAGES and ``trust`` (before importing
    it) or a name that does not resolve.
    """
    parts = target.split(".")
    if not all(part.isidentifier() for part in parts):
        raise Refused("it is not a dotted Python name")
    if parts[0] not in KNOWN_PACKAGES and not _in_packages(target, trust):
        raise Refused(
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
        raise Refused(f"it does not resolve ({type(error).__name__}: {error})") from None
    return obj


def _describe_object(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if module and name else type(obj).__name__


def check_target(target: Any, slot: str, trust: Sequence[str] = ()) -> Any:
    """The object ``target`` names if ``slot`` may build it (or ``trust`` defines it); else Refused."""
    if not isinstance(target, str):
        raise Refused(f"a _target_ must be a dotted name, not a {type(target).__name__}")
    obj = resolve_target(target, trust)
    allowed = allowed_callables().get(slot, {})
    if allowed.get(id(obj)) is obj or _defined_in(obj, trust):
        return obj
    trusted = f" or a class or function defined in {', '.join(trust)}" if trust else ""
    where = f"in {slot} ({SLOT_CONTENTS[slot]})" if slot in SLOT_CONTENTS else "here (plain data)"
    raise Refused(
        f"it names {_describe_object(obj)}, which is not one of the callables a checkpoint "
        f"may build {where}{trusted}"
    )


SLOT_CONTENTS = {
    "net": "segexp.model.networks.build_model",
    "loss": "segexp's losses, torch.nn losses",
    "optimizer": "segexp.model.optim.build_optimizer, torch optimizers",
    "scheduler": "segexp.model.optim.poly / cosine / onecycle",
    "dataset": "segexp's dataset classes",
    "transforms": "albumentations transforms",
}


def _problems(node: Any, key: str, slot: str, trust: Sequence[str]) -> Iterator[str]:
    """``key: why`` for everything in a nested config that instantiating it could misuse."""
    if isinstance(node, str):
        if "${" in node:
            yield f"{key}={node!r}: an interpolation, which could build code when resolved"
        return
    if isinstance(node, (list, tuple)):
        for position, value in enumerate(node):
            yield from _problems(value, f"{key}[{position}]", slot, trust)
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
        elif name == "_target_" or (name in DOTTED_PATH_ARGS and "_target_" in node):
            try:
                check_target(value, "optimizer" if name in DOTTED_PATH_ARGS else slot, trust)
            except Refused as why:
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
        yield from _problems(value, path, slot, trust)


def untrusted_targets(
    node: Any, key: str = "", trust: Sequence[str] = (), slot: str = "none"
) -> list[str]:
    """Every problem (``key: why``) in a nested config that would make building it in
    ``slot`` unsafe; slot ``none`` (plain data) refuses every target."""
    return list(_problems(node, key, slot, tuple(trust)))


def model_problems(hparams: Mapping[str, Any], trust: Sequence[str] = ()) -> list[str]:
    """Problems in a checkpoint's ``hyper_parameters``: each of MODEL_SLOTS checked against
    its own list, every other entry plain data."""
    return [
        problem
        for name, value in hparams.items()
        for problem in untrusted_targets(
            value, f"hyper_parameters.{name}", trust, name if name in MODEL_SLOTS else "none"
        )
    ]


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return "${" not in value
    return isinstance(value, (list, tuple)) and all(_plain(item) for item in value)


def _plain_args(node: Mapping[str, Any], key: str, skip: frozenset[str]) -> tuple[dict, list]:
    args, problems = {}, []
    for name, value in node.items():
        if name in ("_target_", "_partial_") or name in skip:
            continue
        if not isinstance(name, str) or name.startswith("_") or not _plain(value):
            problems.append(f"{key}.{name}: not plain data (a value, or a list of values)")
        else:
            args[name] = value
    return args, problems


def _described(node: Any, key: str, slot: str, trust: Sequence[str]) -> tuple[Any, list[str]]:
    """``node``'s target checked for ``slot`` and its arguments plain, or the problems."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        return None, [f"{key}: not a config with a _target_"]
    try:
        check_target(node["_target_"], slot, trust)
    except Refused as why:
        return None, [f"{key}._target_={node['_target_']!r}: {why}"]
    args, problems = _plain_args(node, key, WRITE_ARGS)
    return {"_target_": node["_target_"], **args}, problems


def checkpoint_data(data: Any, trust: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint's ``run_config.data`` read as plain data: ``(config, problems)``.

    The config's module is SegDataModule (or a class a trusted package defines); its fields
    are DATA_FIELDS with plain values, the dataset class (by identity) with its plain
    arguments except WRITE_ARGS, and transforms from the ``transforms`` slot. A ``generate``
    record comes back as ``generated`` (its plain arguments), never as something to call.
    Every other key is left to the loading command; a target in one is a problem.
    """
    key = "run_config.data"
    if not isinstance(data, Mapping):
        return {}, [f"{key}: a {type(data).__name__}, not a config"]
    problems: list[str] = []
    config: dict[str, Any] = {"_target_": DATA_MODULE}
    target = data.get("_target_", DATA_MODULE)
    try:
        # segexp's own data module, named as segexp names it: resolving that exact path can only
        # give SegDataModule, which is not imported (Lightning, seconds) just to compare.
        if target != DATA_MODULE:
            obj = resolve_target(target, trust) if isinstance(target, str) else None
            from segexp.data.datamodule import SegDataModule

            if obj is not SegDataModule:
                if not _defined_in(obj, trust):
                    raise Refused("the data module of a checkpoint is segexp's SegDataModule")
                config["_target_"] = target
    except Refused as why:
        problems.append(f"{key}._target_={target!r}: {why}")
    for name in DATA_FIELDS:
        if name in data:
            if _plain(data[name]):
                config[name] = data[name]
            else:
                problems.append(f"{key}.{name}: not plain data (a value, or a list of values)")
    if data.get("dataset") is not None:
        dataset, found = _described(data["dataset"], f"{key}.dataset", "dataset", trust)
        problems += found
        if dataset is not None:
            config["dataset"] = {**dataset, "_partial_": True}
    for name in TRANSFORM_FIELDS:
        value = data.get(name) or []
        found = untrusted_targets(value, f"{key}.{name}", trust, "transforms")
        if not isinstance(value, (list, tuple)):
            found.append(f"{key}.{name}: not a list of transforms")
        problems += found
        if not found:
            config[name] = list(value)
    if data.get("generate") is not None:
        from segexp.data.shapes import generate_shapes

        generate = data["generate"]
        target = generate.get("_target_") if isinstance(generate, Mapping) else None
        try:
            if not isinstance(target, str) or resolve_target(target, trust) is not generate_shapes:
                raise Refused("a generated dataset records segexp.data.shapes.generate_shapes")
            args, found = _plain_args(generate, f"{key}.generate", frozenset({"root"}))
            problems += found
            config["generated"] = args
        except Refused as why:
            problems.append(f"{key}.generate._target_={target!r}: {why}")
    handled = {"_target_", "dataset", "generate", *DATA_FIELDS, *TRANSFORM_FIELDS}
    for name, value in data.items():
        if name not in handled:
            problems += untrusted_targets(value, f"{key}.{name}", trust)
    return config, problems
