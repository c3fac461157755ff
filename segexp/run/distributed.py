"""One training job on many processes: DDP inside Hydra multiruns, SLURM restarts, LR scaling.

train.py wraps each Hydra job in :func:`distributed_job`. What it fixes:

- **DDP under ``-m``.** Lightning starts the ranks > 0 of a DDP run by re-running
  ``sys.argv`` (plus ``hydra.run.dir=<HydraConfig run.dir>``). Under a multirun,
  ``sys.argv`` holds the whole sweep (``-m model=unet,fpn``) and ``run.dir`` is not
  the job's folder, so every child would re-run the sweep (and an Optuna sweep would
  hand different ranks different parameters). Before the Trainer starts we point
  ``sys.argv`` at this job's own overrides and ``hydra.run.dir`` at this job's
  folder; after the job we destroy the process group and restore the DDP variables
  (``LOCAL_RANK``, ``WORLD_SIZE``, ...), or Lightning would take the next job for a
  child process and wait forever for its peers.
- **SLURM requeue.** ``hydra/launcher=slurm`` has SLURM send SIGUSR1 ``signal_delay_s``
  before the time limit; ``segexp.run.signals.SignalCheckpoint`` then saves
  ``checkpoints/last.ckpt`` at the next safe point on every rank and rank 0 calls
  ``scontrol requeue`` (Lightning's own auto-requeue is switched off). The requeued
  job re-runs the same submitit pickle, so the same overrides and the same run folder
  (its ``unique_dir`` name comes from the pickled config); there we resume from the
  newest of ``checkpoints/last.ckpt`` and ``hpc_ckpt_<n>.ckpt`` (Lightning's name, left
  by runs of older versions).
- **LR scaling.** ``data.batch_size`` is per device, so the effective batch is
  ``batch_size * devices * num_nodes``; ``lr_scaling=linear`` (or ``sqrt``)
  multiplies ``optimizer.lr`` by that world size (or its square root).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, read_write

from segexp.errors import UserError
from segexp.run.ranks import global_rank, is_ddp_child

log = logging.getLogger(__name__)

# What Lightning's subprocess launcher sets in the parent process (and its children inherit).
DDP_ENV_VARS = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK")
# Hydra overrides a DDP child must not repeat: it is a single run in the job's folder.
CHILD_DROPS_HYDRA_OVERRIDES = (
    "hydra.sweep",
    "hydra/sweeper",
    "hydra.sweeper",
    "hydra/launcher",
    "hydra.launcher",
    "hydra.mode",
    "hydra.run.dir",
    "hydra.job.name",
    "hydra.output_subdir",
)
LR_SCALING_RULES = ("linear", "sqrt")


def child_argv(script: str, task_overrides: list[str], hydra_overrides: list[str]) -> list[str]:
    """The command line a DDP child of this multirun job gets: the script and this job's overrides only."""
    kept_hydra = [
        o for o in hydra_overrides if not o.lstrip("+~").startswith(CHILD_DROPS_HYDRA_OVERRIDES)
    ]
    return [script, *kept_hydra, *task_overrides]


def pin_children_to_job() -> bool:
    """Under ``-m``: make Lightning's DDP children run this job only, in this job's folder.

    Returns True when it changed ``sys.argv`` and ``hydra.run.dir`` (a multirun job's rank 0).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or is_ddp_child():
        return False
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return False  # a plain run: Lightning's own re-launch already does the right thing
    sys.argv = child_argv(
        sys.argv[0], list(hydra_cfg.overrides.task), list(hydra_cfg.overrides.hydra)
    )
    # Lightning passes hydra.run.dir=<HydraConfig.get().run.dir> to the children.
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    log.info(
        "multirun job %s: DDP children will run %s in %s",
        hydra_cfg.job.num,
        sys.argv[1:],
        hydra_cfg.run.dir,
    )
    return True


def cleanup_process_group() -> None:
    """Destroy the torch.distributed process group of the job that just ended, if there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def slurm_restart_count() -> int:
    """How many times SLURM requeued this job (0 outside SLURM or on the first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0) if "SLURM_JOB_ID" in os.environ else 0


def resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that loads, which a restarted job continues from: ``checkpoints/
    last.ckpt``, ``best-*.ckpt`` or Lightning's ``hpc_ckpt_<n>.ckpt`` (written when the requeue
    signal arrived), or None (see ``segexp.run.ckpt_io.choose_resume_checkpoint``)."""
    from segexp.run.ckpt_io import choose_resume_checkpoint

    choice = choose_resume_checkpoint(run_dir)
    for path, why in choice.skipped:
        log.warning("not resuming from %s: %s", path, why)
    return choice.path


def resume_after_requeue(cfg: DictConfig) -> Path | None:
    """On a requeued SLURM job with no explicit ``ckpt_path``: set it to the run folder's newest checkpoint."""
    restarts = slurm_restart_count()
    if restarts == 0 or cfg.get("ckpt_path"):
        return None
    checkpoint = resume_checkpoint(cfg.paths.output_dir)
    if checkpoint is None:
        log.warning(
            "SLURM restart %d: no checkpoint in %s yet, training from scratch",
            restarts,
            cfg.paths.output_dir,
        )
        return None
    with read_write(cfg):
        cfg.ckpt_path = str(checkpoint)
    log.info("SLURM restart %d: resuming from %s", restarts, checkpoint)
    print(f"[segexp] SLURM restart {restarts}: resuming from {checkpoint}", flush=True)
    return checkpoint


def world_size(trainer_cfg: DictConfig) -> int:
    """devices x num_nodes from the trainer config (the number of DDP processes)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        if isinstance(devices, int | str):
            raise UserError(
                f"lr_scaling needs a device count, but trainer.devices={devices!r}; "
                "set trainer.devices=N (or a list of device ids), or drop lr_scaling"
            )
        devices = len(devices)  # a list of device ids
    return devices * int(trainer_cfg.get("num_nodes", 1) or 1)


def scale_learning_rate(cfg: DictConfig) -> float | None:
    """Apply ``lr_scaling`` (null, linear or sqrt) to ``optimizer.lr``; return the new lr or None."""
    rule = cfg.get("lr_scaling")
    if not rule:
        return None
    if rule not in LR_SCALING_RULES:
        raise UserError(
            f"lr_scaling={rule!r} is not a rule (valid: {', '.join(LR_SCALING_RULES)} or null); "
            "e.g. lr_scaling=linear multiplies optimizer.lr by devices x num_nodes"
        )
    size = world_size(cfg.trainer)
    factor = size if rule == "linear" else math.sqrt(size)
    base_lr = float(cfg.optimizer.lr)
    with read_write(cfg):
        cfg.optimizer.lr = base_lr * factor
    log.info(
        "lr_scaling=%s: optimizer.lr %g -> %g (world size %d)",
        rule,
        base_lr,
        cfg.optimizer.lr,
        size,
    )
    return float(cfg.optimizer.lr)


def log_process(cfg: DictConfig) -> None:
    """One line per process in the job's log: which rank ran which overrides where (to debug sweeps)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    rank = global_rank()
    log.info(
        "process rank %d (pid %d) runs overrides %s in %s",
        rank,
        os.getpid(),
        overrides,
        cfg.paths.output_dir,
    )


@contextmanager
def distributed_job(cfg: DictConfig) -> Iterator[None]:
    """Wrap one Hydra job of train.py so DDP works in single runs, multiruns and SLURM requeues."""
    saved_argv = list(sys.argv)
    saved_env = {name: os.environ.get(name) for name in DDP_ENV_VARS}
    parent = not is_ddp_child()
    pin_children_to_job()
    log_process(cfg)
    resume_after_requeue(cfg)
    scale_learning_rate(cfg)
    try:
        yield
    finally:
        if parent:
            # The next job of the sweep must start a fresh process group with fresh children.
            cleanup_process_group()
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            sys.argv = saved_argv
