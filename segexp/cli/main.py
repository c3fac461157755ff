"""``segexp``: one command, one sub-command per tool.

    segexp train [overrides]        segexp eval ckpt_path=... [overrides]
    segexp predict ckpt_path=... input=...   segexp export ckpt_path=...
    segexp --help                   segexp <command> --help

Each sub-command is a module of ``segexp.cli`` with a ``main()``; this picks it, takes the
command word off ``sys.argv`` (Hydra reads the rest) and remembers the command in
``$SEGEXP_COMMAND`` for the processes a run starts again with the same command line
(Lightning's DDP ranks re-run ``sys.argv``). Only the chosen command's module is imported,
so ``segexp --help`` and ``segexp <command> --help`` stay fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_ENV = "SEGEXP_COMMAND"

# command -> (module in segexp.cli, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model from config groups (Hydra overrides; -m for sweeps)"),
    "eval": ("evaluate", "evaluate a checkpoint: mIoU, accuracies, per-class IoU, confusion"),
    "predict": ("predict", "masks and overlays for new images from a checkpoint"),
    "export": ("export", "export a checkpoint to ONNX or TorchScript, parity checked"),
    "check": ("check", "scan a dataset: every image and mask, every problem, class counts"),
    "browse": ("browse", "a picture grid of augmented samples with their masks"),
    "compare": ("compare", "compare run folders: table, plots, one web page"),
    "tune-crf": ("tune_crf", "choose dense-CRF settings on the validation split"),
    "weights": ("weights", "keep pretrained encoder weights for offline machines"),
    "new": ("new", "start a project of your own: models, datasets, losses, configs"),
}
# Older spellings that keep working.
ALIASES = {"evaluate": "eval", "tune_crf": "tune-crf"}


def version() -> str:
    """segexp's version, from the installed package's metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("segexp")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: segexp <command> [arguments]",
        "",
        "Lightning + Hydra experiments for semantic segmentation.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "segexp <command> --help   what a command takes (Hydra commands: groups and options)",
        "segexp --version          the installed version",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int | None:
    """The ``segexp`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = ALIASES.get(args[0], args[0]) if args else None
    if command not in COMMANDS and os.environ.get(COMMAND_ENV) in COMMANDS:
        # A process a run started again with its own command line (a DDP rank): same command.
        command, args = os.environ[COMMAND_ENV], [os.environ[COMMAND_ENV], *args]
    if command is None or command in ("-h", "--help", "help"):
        print(usage())
        return 0
    if command in ("-V", "--version"):
        print(f"segexp {version()}")
        return 0
    if command not in COMMANDS:
        print(f"error: segexp has no command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ[COMMAND_ENV] = command
    module = importlib.import_module(f"segexp.cli.{COMMANDS[command][0]}")
    sys.argv = [sys.argv[0], *args[1:]]
    return module.main()
