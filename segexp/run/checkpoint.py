"""Loading segexp checkpoints with errors a user can act on.

Trust model. A checkpoint is data, but two things in a ``.ckpt`` could run code:

1. Pickle: ``torch.load(weights_only=False)`` can execute anything the file says.
   segexp loads every checkpoint with ``weights_only=True`` (tensors, numbers,
   strings, lists, dicts only), here and in ``train.py`` (``fit``/``test``), and
   writes only such types, so its own checkpoints always load that way.
2. Config: the model config travels inside (``hyper_parameters``) and is built with
   ``hydra.utils.instantiate``. ``check_trusted`` accepts it only if every ``_target_``
   is, by identity, on the list of the slot it sits in (``segexp.run.trust``: networks in
   ``net``, losses in ``loss``...; pure constructors only), and the data side
   (``run_config.data``) reads as plain data (``segexp.run.trust.checkpoint_data``),
   which is all a command ever builds from it.

So loading a checkpoint from someone else cannot run code beyond those constructors,
nor write a file. It can still hold bad weights: evaluate before you rely on it.

Your own classes. Trust is decided by whoever loads, never by the file: the loading
command's ``trust=[mylab]`` (or the user project's own package, ``segexp.project``)
names packages whose classes and functions a checkpoint may build too (defined in
them, by their own ``__module__``: ``mylab.os.system`` is still refused).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segexp.errors import UserError
from segexp.run.trust import (  # noqa: F401 (re-exported)
    UNTRUSTED_MODULE,
    allowed_callables,
    checkpoint_data,
    model_problems,
    untrusted_targets,
)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, untrusted, or does not fit the config."""


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


def check_trusted(
    checkpoint: Mapping[str, Any], path: str | os.PathLike, trust: Sequence[str] = ()
) -> None:
    """Refuse a checkpoint whose configs would instantiate anything but ``allowed_callables()``
    and the classes and functions defined in the ``trust`` packages."""
    hparams = checkpoint.get("hyper_parameters") or {}
    bad = model_problems(hparams, trust) if isinstance(hparams, Mapping) else []
    # The data side is never built as it stands: only its plain reading (checkpoint_data).
    run_config = checkpoint.get("run_config") or {}
    if not isinstance(run_config, Mapping):
        bad.append(f"run_config: a {type(run_config).__name__}, not a config")
    elif run_config.get("data"):
        bad += checkpoint_data(run_config["data"], trust)[1]
    if bad:
        listed = "\n  ".join(bad[:5]) + (f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        packages = sorted({m for m in UNTRUSTED_MODULE.findall("\n".join(bad))})
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
    import torch  # after the checks above: a wrong path is reported without torch's import

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
    checkpoint = read_checkpoint(path)
    check_trusted(checkpoint, path, trust)
    # Imported once the file is read and trusted: Lightning and the model zoo take seconds.
    from segexp.model.encoder_weights import skip_encoder_weights
    from segexp.model.module import SegModule

    with skip_encoder_weights():  # the checkpoint's weights replace them: no lookup, no download
        module = SegModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.to(map_location)
