"""Run folders: a unique folder per run, and what it holds besides Hydra's config.

Files are written atomically (temporary file + rename), so a crash never leaves
a half-written ``metrics.json`` for later tools to choke on.

Hydra names a run folder after the second it started (``outputs/<date>/<time>``),
so two runs started in the same second would share one. The entry configs wrap
that name in the ``unique_dir`` resolver (``${unique_dir:outputs/<date>/<time>}``),
which creates the folder with an exclusive ``os.mkdir`` and, if another run got
there first, takes ``<time>-1``, ``<time>-2``, ... instead. The ``UniqueRunDirs``
Hydra callback registers the resolver in every process that composes the config
(the script itself, a DDP child, a SLURM job unpickling its launcher).

This module imports no torch at import time: ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

RUN_DIR_RESOLVER = "unique_dir"
PACKAGES = (
    "segexp",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "segmentation-models-pytorch",
    "timm",
    "torchmetrics",
    "albumentations",
    "wandb",
    "numpy",
)


# The process umask, read once at import (reading it means setting it, which is not
# thread-safe later on).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def claim_unique_dir(path: str) -> str:
    """Create the folder ``path``, or ``path-1``, ``path-2``, ... if taken; return the one created.

    ``os.mkdir`` is atomic: of several processes asking for the same ``path`` at once,
    each gets a different folder.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = base, 0
    while True:
        try:
            os.mkdir(candidate)
            return str(candidate)
        except FileExistsError:
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")


def register_run_dir_resolver() -> None:
    """Make ``${unique_dir:PATH}`` available to OmegaConf (idempotent).

    Cached per config (``use_cache``), and Hydra copies that cache into each multirun
    job's config, so every reading of ``hydra.run.dir`` / ``hydra.sweep.dir`` in a
    run gets the same folder instead of claiming a new one.
    """
    if not OmegaConf.has_resolver(RUN_DIR_RESOLVER):
        OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, claim_unique_dir, use_cache=True)


class UniqueRunDirs(Callback):
    """Hydra callback (``hydra.callbacks`` of the entry configs) that registers ``unique_dir``.

    Hydra creates its callbacks after composing the config and before it reads the
    run folder; a SLURM job unpickles them before it does, hence ``__setstate__``.
    """

    def __init__(self) -> None:
        register_run_dir_resolver()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        register_run_dir_resolver()

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """Before Hydra creates the run folder or its log file: a folder that cannot be
        written is one line and exit 2 (Hydra would print a traceback)."""
        problem = unwritable_run_dir(config)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(2)


def unwritable_run_dir(config: Any) -> str | None:
    """Why the run folder ``hydra.run.dir`` of ``config`` cannot be written, or None."""
    fix = (
        "resume= writes into the run folder (checkpoints, logs, metrics.json): copy it to a "
        "writable place and resume the copy"
        if config.get("resume")
        else "choose a writable place with hydra.run.dir=PATH (or run from a writable folder)"
    )
    try:
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))  # unique_dir: mkdir
    except OSError as error:
        return f"cannot create the run folder ({error.strerror}: {error.filename}); {fix}."
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    where = run_dir if existing == run_dir else f"{existing} (where {run_dir} would be created)"
    return f"the run folder {where} cannot be written (read-only, not a folder, or no permission); {fix}."


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode any other file gets (0666 - umask),
        # so teammates who can read the run folder can read its metrics too.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON atomically; NaN becomes null (JSON has no NaN)."""
    from segexp.model.metrics import finite_or_none

    if isinstance(data, dict):
        data = {key: finite_or_none(value) for key, value in data.items()}
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit of the code that ran and whether the tree had uncommitted changes."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_line() -> list[str]:
    """The command that started this process, as a user would type it again: the ``segexp``
    command took its sub-command word off ``sys.argv`` (for Hydra) and keeps it in
    ``$SEGEXP_COMMAND``, so it is put back."""
    argv = list(sys.argv)
    command = os.environ.get("SEGEXP_COMMAND")
    if command and Path(argv[0]).name == "segexp" and argv[1:2] != [command]:
        argv.insert(1, command)
    return [sys.executable, *argv]


def run_metadata() -> dict[str, Any]:
    """Git commit, package versions, command line, host: what it takes to re-run this."""
    return {
        "git": git_state(),
        "packages": package_versions(),
        "command": command_line(),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "host": platform.node(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's ``run_info.json`` as a dict, or None when it is absent or unreadable."""
    try:
        info = json.loads((Path(run_dir) / "run_info.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_metadata(run_dir: str | os.PathLike) -> Path:
    """Write ``run_info.json``; a resumed run keeps how it started and appends each restart."""
    info = run_metadata()
    previous = read_run_info(run_dir)
    if previous is not None:
        previous.setdefault("resumes", []).append(info)
        info = previous
    return write_json(Path(run_dir) / "run_info.json", info)


def update_run_info(run_dir: str | os.PathLike, entries: dict[str, Any]) -> Path:
    """Merge ``entries`` into ``run_info.json``; the parts of a run (metadata, init_from,
    skipped samples, recipe, budget) each add their own top-level keys there."""
    return write_json(
        Path(run_dir) / "run_info.json", {**(read_run_info(run_dir) or {}), **entries}
    )
