"""Report each epoch's validation metric to the Optuna study, and stop a hopeless trial.

The Optuna sweeper runs each trial as a Hydra job with ``hparams_search.trial=<number>``
and ``hparams_search.storage=<journal file or URL>``; ``conf/hparams_search/optuna.yaml``
adds this callback with them. In the job's process (the sweep's own, or a SLURM job)
the callback re-attaches to its trial, reports ``monitor`` after every validation
epoch, and asks the pruner (built from ``hparams_search.pruner``) whether to go on.
When the pruner says stop, training stops at the end of that epoch, the study records
the trial as pruned, and ``TrialPruned`` ends the job (``segexp.track.sweeps.run_job``
records it as pruned, not failed, and the sweep goes on).

Without a trial number (a plain run, or a reproduced trial) it does nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl

from segexp.errors import UserError

log = logging.getLogger(__name__)


class OptunaPruning(pl.Callback):
    """Report ``monitor`` to trial ``trial`` of ``study_name`` in ``storage`` every epoch; prune.

    Args:
        storage: the study's journal file or RDB URL (the sweeper passes it to each job).
        study_name: the study's name.
        trial: the trial's number; None: the callback does nothing.
        monitor: the metric to report (the sweep's ``optimized_metric``).
        pruner: ``median``, ``hyperband`` or ``none``.
        n_startup_trials: trials that are never pruned, so the pruner has something to compare with.
        warmup_epochs: epochs a trial always trains before it can be pruned.
        max_epochs: a trial's full length (Hyperband's largest budget).
    """

    def __init__(
        self,
        storage: str | None,
        study_name: str,
        trial: int | None,
        monitor: str = "val/mIoU",
        pruner: str | None = "median",
        n_startup_trials: int = 5,
        warmup_epochs: int = 1,
        max_epochs: int | None = None,
    ) -> None:
        super().__init__()
        from segexp.track.study import PRUNERS

        if pruner not in (*PRUNERS, None):
            raise UserError(
                f"hparams_search.pruner={pruner!r} is not a pruner; valid: {', '.join(PRUNERS)}"
            )
        self.storage = storage
        self.study_name = study_name
        self.trial_number = None if trial is None else int(trial)
        self.monitor = monitor
        self.pruner_name = pruner
        self.n_startup_trials = n_startup_trials
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs
        self._trial: Any = None
        self.pruned_at: tuple[int, float] | None = None

    @property
    def active(self) -> bool:
        return self.trial_number is not None and bool(self.storage)

    def _attach(self) -> Any:
        """The running trial in the study, or None (finished: e.g. a reproduced trial's config)."""
        import optuna

        from segexp.track.study import load_study, make_pruner

        pruner = make_pruner(
            self.pruner_name, self.n_startup_trials, self.warmup_epochs, self.max_epochs
        )
        study = load_study(str(self.storage), self.study_name, pruner)
        storage = study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            study._study_id, self.trial_number
        )
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
            log.warning(
                "trial %d of study %r is not running: this run reports nothing to it",
                self.trial_number,
                self.study_name,
            )
            return None
        return optuna.trial.Trial(study, trial_id)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.active and trainer.is_global_zero and self._trial is None:
            self._trial = self._attach()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.active:
            return
        prune, value = False, None
        epoch = trainer.current_epoch + 1  # epochs trained: the pruner's step
        if trainer.is_global_zero and self._trial is not None:
            metric = trainer.callback_metrics.get(self.monitor)
            value = None if metric is None else float(metric)
            if value is not None and math.isfinite(value):
                self._trial.report(value, step=epoch)
                prune = self._trial.should_prune()
        prune = trainer.strategy.broadcast(prune)  # every DDP rank stops at the same epoch
        if prune:
            trainer.should_stop = True
            self.pruned_at = (epoch, value if value is not None else math.nan)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_at is None:
            return
        import optuna

        epoch, value = self.pruned_at
        message = (
            f"trial {self.trial_number} pruned after epoch {epoch}: {self.monitor}={value:.4g} "
            f"({self.pruner_name} pruner)"
        )
        if trainer.is_global_zero and self._trial is not None:
            self._trial.study.tell(
                self.trial_number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True
            )
        log.info(message)
        raise optuna.TrialPruned(message)
