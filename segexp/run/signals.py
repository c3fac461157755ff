"""Kill signals end a run cleanly and resumably (``SignalCheckpoint``).

SIGTERM / SIGINT / SIGUSR1 (SLURM preemption, Ctrl+C, a scheduler's warning signal)
finish the current batch, save ``checkpoints/last.ckpt`` and exit with
``128 + signal number`` (143 for SIGTERM), so SLURM and CI see a failure and
``python train.py resume=<run folder>`` continues. Lightning on its own exits 0 after
SIGTERM. Under SLURM, SIGUSR1 (the time-limit warning) also requeues the job, which
resumes in the same run folder. Non-finite losses and exact resumes are
``segexp.run.guards``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Interrupted(SystemExit):
    """The run stopped on a signal after saving a checkpoint; exit code 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class SignalCheckpoint(pl.Callback):
    """Turn a kill signal into: finish the batch, save ``last.ckpt``, exit non-zero.

    The signal handler only records the signal: no checkpoint, collective or
    subprocess runs inside it. Every rank acts on it at the same safe point, outside
    any collective: after a training batch, or at the end of the epoch (after
    validation and the epoch's checkpoints) for a signal that arrives during the last
    batch or validation, or at the end of training. The ranks first agree (one of them
    may not have been signalled), then all save the checkpoint together (rank 0 writes).
    ``segexp.run.guards.ExactResume`` lets a resume continue the epoch's data where it
    stopped. A second Ctrl+C interrupts at once (Lightning's KeyboardInterrupt handling, exit 1).

    Under SLURM (Lightning's ``SLURMEnvironment`` detects the job), ``requeue_signal``
    (SIGUSR1, what ``hydra/launcher=slurm`` asks SLURM to send before the time limit)
    also requeues the job: after the checkpoint, rank 0 runs ``scontrol requeue`` and
    all ranks exit; the requeued job resumes in the same run folder
    (``segexp.run.distributed.resume_after_requeue``). The SIGTERM that SLURM sends
    with the requeue is ignored: the process is already on its way out. Lightning's
    own auto-requeue is switched off at ``setup``: it saves and requeues inside its
    signal handler, so a rank inside a gradient all-reduce and one in the checkpoint
    barrier wait for each other forever.

    Args:
        dirpath: where ``last.ckpt`` goes (the run's ``checkpoints/`` folder).
        signals: names of the signals to handle.
        requeue_signal: the signal that requeues a SLURM job; null: never requeue.
    """

    def __init__(
        self, dirpath: str, signals: Sequence[str] = SIGNALS, requeue_signal: str | None = "SIGUSR1"
    ) -> None:
        self.dirpath = Path(dirpath)
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.requeue_signal = getattr(signal, requeue_signal) if requeue_signal else None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: stop now
        self.received = signum
        print(
            f"\nsegexp: received {signal.Signals(signum).name}; saving a checkpoint after this batch...",
            file=sys.stderr,
            flush=True,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every save (this one, ModelCheckpoint's, SLURM's hpc_ckpt) atomic and fsynced, even
        # with a config lacking trainer.plugins; drop temp files a SIGKILL left behind.
        from segexp.run.ckpt_io import use_durable_io

        use_durable_io(trainer, [self.dirpath, self.dirpath.parent])
        if self.requeue_signal is not None:
            disable_lightning_requeue(trainer)  # before Lightning registers its handlers

    # All of them at train start: after Lightning registers its own SIGTERM handler
    # (which would otherwise stop the run mid-validation and exit 0).
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        if not _in_main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        if _in_main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _pending(self, trainer: pl.Trainer) -> bool:
        # Under DDP only rank 0 may have been signalled (local launcher); all ranks must agree.
        received = self.received is not None
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        return received

    def _agreed_signal(self, trainer: pl.Trainer) -> int:
        # Ranks may hold different signals (or none): all must take the same decisions.
        signum = self.received or 0
        if trainer.world_size > 1:
            value = torch.tensor(float(signum), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(value, reduce_op="max").item())
        return signum or signal.SIGTERM

    def _stop(self, trainer: pl.Trainer, where: str) -> None:
        signum = self._agreed_signal(trainer)
        callback = trainer.checkpoint_callback
        path = str(self.ckpt_path)
        if (
            isinstance(callback, pl.callbacks.ModelCheckpoint)
            and callback.dirpath
            and callback.save_last
        ):
            # Save as ModelCheckpoint's own last.ckpt and record it in the checkpoint, so
            # after resume it overwrites this file instead of starting last-v1.ckpt beside it.
            path = os.path.join(
                callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            )
            callback.last_model_path = path
        job_id = slurm_job_id() if signum == self.requeue_signal else None
        if job_id is not None:
            self._expect_requeue_sigterm()
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
        run_dir = self.dirpath.parent
        stopped = (
            f"segexp: stopped by {signal.Signals(signum).name} {where} (epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}); saved {path}."
        )
        requeued = False
        if job_id is not None:
            if trainer.is_global_zero:
                requeued = requeue_slurm_job(job_id)
            if trainer.world_size > 1:
                # No rank may exit before the requeue: a job whose tasks all ended is over.
                requeued = trainer.strategy.reduce_boolean_decision(requeued, all=False)
        if requeued:
            message = f"{stopped} Requeued SLURM job {job_id}; it resumes in {run_dir}."
        else:
            message = f"{stopped} Continue with: python train.py resume={run_dir}"
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        if requeued:
            # SIGTERM stays ignored until the process exits: not put back by _restore(), and
            # Lightning's teardown, which restores the handlers it found at fit start (SIG_DFL
            # would kill the process mid-exit), puts back "ignore" too.
            self._previous.pop(signal.SIGTERM, None)
            originals = _restored_at_teardown(trainer)
            if signal.SIGTERM in originals:
                originals[signal.SIGTERM] = signal.SIG_IGN
        self._restore()  # without a requeue, SIGTERM's handler from before comes back here
        raise Interrupted(signum, message)

    def _expect_requeue_sigterm(self) -> None:
        # `scontrol requeue` has SLURM send SIGTERM to every task of the job at once, while
        # this process is already stopping in order. That SIGTERM is no new request: left to our
        # handler it would announce a second stop, and to Lightning's (restored at exit) it
        # broadcasts to ranks that have left, fails, and the sweep records the job as failed.
        # Set on every rank before the checkpoint's barrier, so before rank 0 can requeue.
        if _in_main_thread():
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._previous.setdefault(signal.SIGTERM, previous)  # for _restore() if no requeue

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        batch_idx = args[-1] if args else 0
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if not last_batch and self._pending(trainer):
            self._stop(trainer, "mid-epoch")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending(trainer):
            self._stop(trainer, "at the end of an epoch")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal after the last epoch's check: training is complete, but the run was
        # asked to stop (or to requeue, which then runs the test), so it must not go on.
        if self._pending(trainer):
            self._stop(trainer, "after the last epoch")
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()


def _restored_at_teardown(trainer: pl.Trainer) -> dict[int, Any]:
    """The signal handlers Lightning's signal connector puts back when fit ends ({} if none)."""
    originals = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
    return originals if isinstance(originals, dict) else {}


def disable_lightning_requeue(trainer: pl.Trainer) -> None:
    """Switch off the auto-requeue of Lightning's ``SLURMEnvironment`` (SignalCheckpoint requeues).

    What ``plugins=[SLURMEnvironment(auto_requeue=False)]`` would do, for the environment
    Lightning detected, so a config needs no SLURM-only trainer plugin.
    """
    from lightning_fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment):
        environment.auto_requeue = False


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this SLURM job (``<array>_<task>`` in an array),
    or None outside a SLURM-managed job (an interactive ``salloc`` shell does not count)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>``; True when SLURM accepted it (a warning otherwise)."""
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"segexp: could not requeue SLURM job {job_id}: {error}", file=sys.stderr)
        return False
    if result.returncode != 0:
        print(
            f"segexp: `scontrol requeue {job_id}` failed ({result.returncode}): "
            f"{result.stderr.strip()}",
            file=sys.stderr,
        )
        return False
    return True


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
