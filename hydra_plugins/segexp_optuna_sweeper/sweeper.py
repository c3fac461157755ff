"""The sweeper: ask the study for trials, launch them as Hydra jobs, tell it how they ended.

Each sweep process (worker) runs this loop until the study holds ``n_trials`` trials
(``segexp.track.study`` says which count), however many workers share the study:

1. interrupt running trials whose worker stopped stamping them (their parameters are
   queued again); 2. ask for up to ``n_jobs`` trials (queued ones first), dropping any
   that came after the budget was full; 3. launch them with the chosen launcher, each
   job getting ``hparams_search.trial=<number>`` and the storage, so that its pruning
   callback (``segexp.track.pruning``) reports every epoch and can prune it; 4. tell the
   study each job's result: its value, or failed (crash, NaN). A pruned job told the
   study itself. When the budget is full but other workers still run trials, it waits
   for them: a trial of a dead worker becomes stale and is run again here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def quote(value: str) -> str:
    """A Hydra override value that stays one string (paths, URLs)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class Heartbeat:
    """A thread that stamps the trials this process runs, every ``interval`` seconds."""

    def __init__(self, storage_url: str, interval: float) -> None:
        from segexp.track.study import open_storage

        self._storage = open_storage(storage_url)  # its own: the main thread's stays unshared
        self._interval = interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from segexp.track.study import stamp

        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._ids)
            try:
                stamp(self._storage, ids)
            except Exception as error:  # a busy file system: the next stamp may work
                log.warning("heartbeat of trials %s failed: %s", ids, error)

    def add(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.update(ids)

    def discard(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.difference_update(ids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SegexpOptunaSweeper(Sweeper):
    """Optuna search over ``params`` with durable, shared storage, pruning and any launcher."""

    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: str,
        study_name: str,
        storage: str | None,
        sampler: Any,
        seed: int | None,
        n_startup_trials: int,
        heartbeat_interval: float,
        grace_period: float,
        max_failure_rate: float,
        params: Mapping[str, str] | None,
    ) -> None:
        from segexp.track.study import StudyConfigError

        if direction not in ("maximize", "minimize"):
            raise StudyConfigError(
                f"hydra.sweeper.direction={direction!r}: use maximize or minimize"
            )
        if n_trials < 1 or n_jobs < 1:
            raise StudyConfigError(
                f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be >= 1"
            )
        if heartbeat_interval <= 0 or grace_period <= heartbeat_interval:
            raise StudyConfigError(
                f"hparams_search.heartbeat_interval={heartbeat_interval} must be > 0 and "
                f"grace_period={grace_period} larger than it (a few heartbeats)"
            )
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.direction = direction
        self.study_name = str(study_name)
        self.storage = storage
        self.sampler_name = (
            OmegaConf.to_container(sampler) if isinstance(sampler, DictConfig) else sampler
        )
        self.seed = None if seed is None else int(seed)
        self.n_startup_trials = int(n_startup_trials)
        self.heartbeat_interval = float(heartbeat_interval)
        self.grace_period = float(grace_period)
        self.max_failure_rate = float(max_failure_rate)
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- the loop ---------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from segexp.track import study as studies

        assert self.config is not None and self.launcher is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        url = studies.storage_url(self.storage, sweep_dir)

        space = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        distributions, fixed = studies.parse_search_space(space)
        for key in fixed:  # a value fixed on the command line wins over the search space
            distributions.pop(key, None)
        for key in ("hparams_search.trial", "hparams_search.storage"):
            fixed.pop(key, None)
        fixed["hparams_search.storage"] = quote(url)
        n_trials = self.n_trials
        if self.sampler_name == "grid":
            n_trials = min(n_trials, studies.grid_size(distributions))

        study = optuna.create_study(
            study_name=self.study_name,
            storage=studies.open_storage(url),
            sampler=self._sampler(distributions, None),
            direction=self.direction,
            load_if_exists=True,
        )
        pruner = OmegaConf.select(self.config, "hparams_search.pruner", default=None)
        log.info(
            "Optuna study %r in %s: %d trials (all workers), sampler %s, pruner %s; "
            "search space: %s. Follow it with: optuna-dashboard %s",
            self.study_name,
            url,
            n_trials,
            self.sampler_name,
            pruner or "none",
            ", ".join(distributions) or "none",
            url,
        )
        heartbeat = Heartbeat(url, self.heartbeat_interval)
        ran: list[int] = []
        try:
            waiting_for: list[int] = []
            while True:
                studies.fail_stale_trials(study, self.grace_period)
                trials = study.get_trials(deepcopy=False)
                left = studies.trials_left(trials, n_trials)
                if left <= 0:
                    running = [t.number for t in trials if t.state.name == "RUNNING"]
                    if not running:
                        break
                    if running != waiting_for:
                        log.info(
                            "all %d trials started; waiting for trials %s of other sweep "
                            "processes (run here again if their process is gone)",
                            n_trials,
                            running,
                        )
                        waiting_for = running
                    time.sleep(self.heartbeat_interval)
                    continue
                batch = self._ask(study, distributions, min(self.n_jobs, left), n_trials)
                if batch:
                    ran += self._run_batch(study, batch, fixed, heartbeat)
        finally:
            heartbeat.stop()
        return self._write_results(study, sweep_dir, url, ran)

    def _sampler(self, distributions: Mapping[str, Any], number: int | None) -> Any:
        from segexp.track.study import make_sampler

        seed = None if self.seed is None else self.seed + (number or 0)
        return make_sampler(self.sampler_name, seed, distributions, self.n_startup_trials)

    def _ask(
        self, study: Any, distributions: Mapping[str, Any], count: int, n_trials: int
    ) -> list[Any]:
        """Up to ``count`` new trials with sampled parameters; none past the budget."""
        from segexp.track.study import drop_surplus, is_surplus, stamp

        batch = []
        for _ in range(count):
            study.sampler = self._sampler(distributions, len(study.get_trials(deepcopy=False)))
            trial = study.ask()  # a queued (re-run) trial first
            stamp(study._storage, [trial._trial_id])
            if is_surplus(study.get_trials(deepcopy=False), trial.number, n_trials):
                drop_surplus(study, trial)  # another worker took the last slot
                break
            # Trial k samples with seed + k, whichever worker runs it.
            study.sampler = self._sampler(distributions, trial.number)
            for name, distribution in distributions.items():
                trial._suggest(name, distribution)
            batch.append(trial)
        return batch

    def _run_batch(
        self, study: Any, batch: list[Any], fixed: Mapping[str, str], heartbeat: Heartbeat
    ) -> list[int]:
        from segexp.track.study import interrupt

        overrides = []
        for trial in batch:
            params = {name: value for name, value in trial.params.items()}
            job = [f"{name}={value}" for name, value in params.items()]
            job += [f"{name}={value}" for name, value in fixed.items() if name not in params]
            job.append(f"hparams_search.trial={trial.number}")
            overrides.append(job)
            log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
        ids = [trial._trial_id for trial in batch]
        heartbeat.add(ids)
        try:
            # Job numbers follow trial numbers (W&B run names, logs); the folders are the
            # trial numbers (hydra.sweep.subdir), unique however many workers share the study.
            returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
        except BaseException:  # Ctrl-C, a signal, a launcher error: run them again later
            for trial in batch:
                interrupt(study, trial, "its sweep process stopped")
            raise
        finally:
            heartbeat.discard(ids)
        hydra_failures = [ret for ret in returns if ret.status == JobStatus.FAILED]
        for trial, ret in zip(batch, returns):
            self._tell(study, trial, ret)
        if hydra_failures and len(hydra_failures) / len(returns) > self.max_failure_rate:
            log.error(
                "%d of %d jobs could not run (max_failure_rate=%s)",
                len(hydra_failures),
                len(returns),
                self.max_failure_rate,
            )
            for ret in hydra_failures:
                _ = ret.return_value  # raises the job's own exception, with its traceback
        return [trial.number for trial in batch]

    def _tell(self, study: Any, trial: Any, ret: Any) -> None:
        from optuna.trial import TrialState

        stored = study._storage.get_trial(trial._trial_id)
        if stored.state.is_finished():  # pruned by its job, or declared stale meanwhile
            log.info("trial %d: %s", trial.number, stored.state.name.lower())
            return
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            state, values = TrialState.COMPLETE, [float(value)]
        else:
            state, values = TrialState.FAIL, None
        try:
            study.tell(trial.number, values, state=state, skip_if_finished=True)
        except RuntimeError as error:  # GridSampler calls study.stop() when the grid is done
            if "Study.stop" not in str(error):
                raise
        log.info(
            "trial %d: %s", trial.number, f"{value:.4g}" if values else "failed (crash or NaN)"
        )

    def _write_results(self, study: Any, sweep_dir: Path, url: str, ran: list[int]) -> Any:
        from segexp.track.study import state_counts

        trials = study.get_trials(deepcopy=False)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": url,
            "trials": state_counts(trials),
            "ran_here": ran,
        }
        try:
            best = study.best_trial
            results.update(
                best_trial=best.number, best_params=dict(best.params), best_value=best.value
            )
            log.info("best trial %d: %.4g %s", best.number, best.value, best.params)
        except ValueError:  # no completed trial
            log.warning("no trial of study %r completed", self.study_name)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        log.info("trials: %s; %s", results["trials"], sweep_dir / RESULTS_FILE)
        return results
