"""Which process of a job this is: the one rank-0 test every run file writer uses.

Lightning, torchrun and SLURM each announce a process's place in the job through
environment variables; a process writes run files (metadata, W&B id, metrics) only
when every one of them says 0. Reading them from the environment (rather than from a
Trainer) works before the Trainer exists, e.g. while the config is prepared.
"""

from __future__ import annotations

import os

# RANK: torchrun and Lightning's DDP launcher (global rank); LOCAL_RANK / NODE_RANK:
# Lightning's launcher; SLURM_PROCID: srun / submitit tasks (global rank).
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def global_rank() -> int:
    """This process's global rank (0 in a single-process run)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").strip():
            return _env_int(name)
    return _env_int("LOCAL_RANK") + _env_int("NODE_RANK")


def is_global_zero() -> bool:
    """True in the one process that writes run files: rank 0 of DDP, torchrun and SLURM."""
    return all(_env_int(name) == 0 for name in RANK_ENV_VARS)


def is_ddp_child() -> bool:
    """True in a process Lightning (or torchrun) started for a rank > 0 of the current job."""
    return _env_int("LOCAL_RANK") > 0
