"""Checkpoint files that survive a kill at any moment, and the choice of one to resume from.

- ``DurableCheckpointIO`` (``trainer.plugins`` in ``conf/trainer/default.yaml``) writes
  every checkpoint Lightning saves (``ModelCheckpoint``'s best and last, ``SignalCheckpoint``,
  the SLURM ``hpc_ckpt_<n>.ckpt``) to a temporary file in the checkpoint's own folder,
  flushes and fsyncs it, renames it over the target (``os.replace``, atomic on one
  filesystem) and fsyncs the folder. A kill, even SIGKILL, leaves either the old file
  or the new one, never a truncated one; Lightning's own save goes through a temporary
  file under ``$TMPDIR``, which on another filesystem is a copy, not a rename.
  Temporary files (``.<name>.<random>.partial``) are removed on every error, and those
  a SIGKILL left behind are swept when a run starts or resumes.
- ``RunCheckpoint`` (``conf/callbacks/default.yaml``): Lightning's ``ModelCheckpoint``
  that, on a resume, removes its own files the checkpoint does not track (a best file
  written just before a kill, or one the kill kept from deletion), replaces the best file
  it resumed from like any other (Lightning keeps that one forever) and follows a run
  folder that was moved.
- ``choose_resume_checkpoint``: the newest checkpoint of a run folder that loads
  (``last.ckpt``, ``best-*.ckpt``, ``hpc_ckpt_<n>.ckpt``), and why the others were skipped.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from segexp.run.ranks import is_global_zero

TEMP_SUFFIX = ".partial"
# .<target name>.<random token>.partial, e.g. .last.ckpt.3f9a0c12.partial
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8,}" + re.escape(TEMP_SUFFIX) + "$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where the OS cannot fsync folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(checkpoint: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through a fsynced temporary file in the same folder + rename."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt / SystemExit: never leave the temp file
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sweep_partial(directories: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary checkpoint files a killed save left in ``directories``; return them."""
    removed = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in directory.glob(f".*{TEMP_SUFFIX}"):
            if _TEMP_NAME.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, durable local saves (see module doc).

    Remote paths (``s3://``, ...) keep Lightning's own save.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(str(path).removeprefix("file://"))
        if path.parent not in self._swept:  # once per folder: leftovers of a killed earlier run
            sweep_partial([path.parent])
            self._swept.add(path.parent)
        save_atomic(checkpoint, path)


def use_durable_io(trainer: pl.Trainer, directories: Iterable[str | os.PathLike] = ()) -> None:
    """Give ``trainer`` a DurableCheckpointIO if it still has Lightning's default one (a config
    without ``trainer.plugins``), and sweep leftover temporary files from ``directories``."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = DurableCheckpointIO()
    if trainer.is_global_zero:
        sweep_partial(directories)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose folder holds exactly the files it tracks after a resume.

    A kill between writing a new best file and deleting the old one, or after the new
    best but before ``last.ckpt``, leaves a file the resumed state does not know; it would
    stay forever (or push the next save to ``-v1``). On resume such files of this
    callback's own name pattern are removed. A run folder moved since the checkpoint was
    written keeps its best-k bookkeeping (Lightning drops it when the folder differs).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = dict(state_dict, dirpath=self.dirpath)
            move = lambda p: (  # noqa: E731
                os.path.join(self.dirpath, os.path.basename(p))
                if p and os.path.dirname(p) == old
                else p
            )
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = move(state_dict[key])
            if isinstance(state_dict.get("best_k_models"), dict):
                state_dict["best_k_models"] = {
                    move(p): v for p, v in state_dict["best_k_models"].items()
                }
        super().load_state_dict(state_dict)

    def _should_remove_checkpoint(self, trainer: pl.Trainer, previous: str, current: str) -> bool:
        # Lightning never deletes the file a run resumed from, so resuming from best-epoch004
        # would keep it beside every later best. One of our own files in our folder, replaced
        # by a newer one already on disk, goes like any other.
        if (
            previous != current
            and trainer.ckpt_path
            and self.dirpath
            and os.path.realpath(previous) == os.path.realpath(trainer.ckpt_path)
            and os.path.dirname(os.path.realpath(previous)) == os.path.realpath(self.dirpath)
        ):
            return True
        return super()._should_remove_checkpoint(trainer, previous, current)

    # Runs once the resumed checkpoint's state is loaded: at fit start for most strategies
    # (also when the run has no epochs left), at train start for those restoring after setup.
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.strategy.restore_checkpoint_after_setup:
            self._drop_untracked(trainer)
            self._check_best(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.strategy.restore_checkpoint_after_setup:
            self._drop_untracked(trainer)
            self._check_best(trainer)

    def _check_best(self, trainer: pl.Trainer) -> None:
        """Say before the first resumed step when the best file the resumed state names is
        gone: a better epoch replaces it, else the test stage uses the final weights."""
        best = self.best_model_path
        if trainer.ckpt_path and best and not os.path.isfile(best) and trainer.is_global_zero:
            print(
                f"segexp: resume: the best checkpoint {best} is gone; training goes on, and "
                "the test stage will use a better epoch's checkpoint if one is saved, else "
                "the final weights (last.ckpt)",
                file=sys.stderr,
                flush=True,
            )

    def _drop_untracked(self, trainer: pl.Trainer) -> None:
        prefix = (self.filename or "").split("{", 1)[0]
        # Only a best-k callback (a monitor) leaves stray files; a fixed name is overwritten.
        if not (trainer.ckpt_path and self.dirpath and prefix and self.monitor is not None):
            return
        if not trainer.is_global_zero:
            return
        tracked = (*self.best_k_models, self.best_model_path, self.last_model_path)
        keep = {os.path.realpath(p) for p in (*tracked, trainer.ckpt_path) if p}
        for path in sorted(Path(self.dirpath).glob(f"{prefix}*{self.FILE_EXTENSION}")):
            if os.path.realpath(path) not in keep:
                path.unlink(missing_ok=True)
                print(
                    f"segexp: removed {path}: the resumed checkpoint does not track it "
                    "(left by the interrupted run)",
                    file=sys.stderr,
                    flush=True,
                )


@dataclass
class ResumeChoice:
    """The checkpoint to resume from (None: none loads) and ``(path, why)`` for each skipped one."""

    path: Path | None
    epoch: int | None = None
    step: int | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def describe(self) -> str:
        text = f"resuming from {self.path} (epoch {self.epoch}, step {self.step})"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{p.name}: {why}" for p, why in self.skipped)
        return text


def checkpoint_progress(path: str | os.PathLike) -> tuple[int, int]:
    """(epoch, global step) of a Lightning checkpoint; raises ValueError if it does not load."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        first = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"does not load ({type(error).__name__}: {first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a training checkpoint (no state_dict)")
    return int(checkpoint.get("epoch", 0) or 0), int(checkpoint.get("global_step", 0) or 0)


def resume_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """A run folder's checkpoints in order of preference: last, best-*, hpc_ckpt_* (newest n first)."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    hpc = sorted(
        run_dir.glob("hpc_ckpt_*.ckpt"),
        key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if p.stem.rsplit("_", 1)[-1].isdigit() else -1,
        reverse=True,
    )
    return [
        *[folder / "last.ckpt"] * (folder / "last.ckpt").is_file(),
        *sorted(folder.glob("best*.ckpt")),
        *hpc,
    ]


def choose_resume_checkpoint(run_dir: str | os.PathLike) -> ResumeChoice:
    """The run folder's newest checkpoint that loads (most steps; on a tie the newer file, then
    the preferred one: last, best, hpc), after sweeping temporary files a kill left."""
    run_dir = Path(run_dir)
    if is_global_zero():
        sweep_partial([run_dir / "checkpoints", run_dir])
    skipped: list[tuple[Path, str]] = []
    loadable: list[tuple[tuple[int, float, int], Path, int, int]] = []
    for rank, path in enumerate(resume_candidates(run_dir)):
        try:
            epoch, step = checkpoint_progress(path)
            mtime = path.stat().st_mtime
        except (ValueError, OSError) as why:
            skipped.append((path, str(why)))
            continue
        loadable.append(((step, mtime, -rank), path, epoch, step))
    if not loadable:
        return ResumeChoice(None, skipped=skipped)
    _, path, epoch, step = max(loadable, key=lambda entry: entry[0])
    return ResumeChoice(path, epoch, step, skipped)
