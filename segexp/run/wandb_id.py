"""A run's W&B id, kept in its run folder (``wandb_id.txt``): the one reader and writer.

The id is chosen before W&B starts and saved in the run folder, so a run killed at any
point is continued in the same W&B run by ``resume=`` (or a SLURM requeue), and a
reproduction starts a new one.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from segexp.run.ranks import is_global_zero
from segexp.run.rundir import write_text

WANDB_ID_FILE = "wandb_id.txt"
_ALPHABET = string.ascii_lowercase + string.digits


def new_wandb_id() -> str:
    """A fresh id in W&B's own format: 8 characters of [a-z0-9]."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(8))


def read_wandb_id(run_dir: str | os.PathLike) -> str | None:
    """The W&B run id a run folder logged to, or None.

    ``wandb_id.txt`` first; for folders written before it existed, the newest
    ``wandb/*run-<time>-<id>`` folder W&B wrote.
    """
    run_dir = Path(run_dir)
    try:
        text = (run_dir / WANDB_ID_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        text = ""
    if text:
        return text
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[-1])
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def choose_wandb_id(run_dir: str | os.PathLike, explicit: str | None = None) -> str:
    """This run's W&B id, saved in the run folder before W&B starts.

    The explicit one, else the W&B agent's (``WANDB_RUN_ID``: its sweep owns the id), else
    the one saved in the folder (a resumed or requeued run continues its W&B run), else new.
    """
    run_id = explicit or os.environ.get("WANDB_RUN_ID") or read_wandb_id(run_dir) or new_wandb_id()
    write_wandb_id(run_dir, run_id)
    return run_id


def write_wandb_id(run_dir: str | os.PathLike, run_id: str) -> None:
    """Save ``run_id`` in the run folder (atomically; rank 0 only, the others share the folder)."""
    if is_global_zero():
        write_text(Path(run_dir) / WANDB_ID_FILE, run_id + "\n")
