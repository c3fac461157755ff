"""The sweeper's config (``hydra/sweeper=segexp_optuna``), registered in Hydra's ConfigStore."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SegexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.segexp_optuna_sweeper.sweeper.SegexpOptunaSweeper"
    # Trials of the whole study (every sweep process sharing it together), not of this process.
    n_trials: int = 20
    # Trials asked for at once and handed to the launcher together: the basic launcher runs
    # them one after another, a parallel launcher (SLURM) side by side.
    n_jobs: int = 1
    direction: str = "maximize"
    study_name: str = "segexp"
    # null: <sweep dir>/optuna.journal; a file path: a journal file; or an RDB URL.
    storage: Any = None
    sampler: Any = "tpe"  # tpe | random | grid | cmaes, or a config with _target_
    seed: Any = None  # trial k samples with seed + k: reproducible, and workers differ
    n_startup_trials: int = 5  # random trials before TPE / CMA-ES model the results
    heartbeat_interval: float = 30.0  # seconds between "still running" stamps of a trial
    grace_period: float = 120.0  # a running trial without a stamp for this long is interrupted
    # Share of a batch's jobs that Hydra could not run at all (e.g. a bad override) before the
    # sweep stops; crashed and NaN trials are failed trials, not counted here.
    max_failure_rate: float = 0.0
    params: Any = None  # {key: search space}, e.g. optimizer.lr: tag(log, interval(1e-4, 1e-2))


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="segexp_optuna",
    node=SegexpOptunaSweeperConf,
    provider="segexp",
)
