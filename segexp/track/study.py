"""Optuna studies that many sweep processes share: storage, search space, sampler, pruner, budget.

The segexp Optuna sweeper (``hydra_plugins/segexp_optuna_sweeper``) and the pruning
callback of each trial (``segexp.track.pruning``) both work through this module:

- storage: a journal file (``optuna.journal`` in the sweep folder by default, or any
  path) or an RDB URL (``sqlite:///...``, ``postgresql://...``). Every sweep process
  started with the same storage and study name works on one study.
- budget: ``n_trials`` counts the study's trials, whoever ran them: completed, pruned,
  failed (a crash or NaN) and running ones. Trials whose sweep process died
  (interrupted) and trials asked for after the budget was full (surplus) do not count.
- liveness: a sweep process stamps the trials it runs every ``heartbeat_interval``
  seconds; a running trial whose stamp is older than ``grace_period`` belongs to a dead
  process: it is marked failed (interrupted) and its parameters are queued again.

optuna is imported inside the functions: Hydra imports the sweeper plugin (and so this
module) on every start, ``--help`` included.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segexp.errors import UserError

log = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"
HEARTBEAT_ATTR = "segexp:heartbeat"  # system attr: time.time() of the running trial's last stamp
INTERRUPTED_ATTR = "segexp:interrupted"  # system attr: its sweep process died or was stopped
SURPLUS_ATTR = "segexp:surplus"  # system attr: asked for after the budget was full; never run
RETRY_OF_ATTR = "retry_of"  # user attr of a re-queued trial: the number of the interrupted one
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")


class StudyConfigError(UserError):
    """A bad ``hparams_search.*`` / ``hydra.sweeper.*`` value."""


# -- storage ----------------------------------------------------------------------------------
def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """Where the study lives: an RDB URL as given, else an absolute journal file path.

    ``None`` means ``<sweep_dir>/optuna.journal``; a relative path is taken from the
    current folder (the folder train.py was started in, also for SLURM jobs).
    """
    if storage is None or str(storage).strip() in ("", "null", "None"):
        return str((Path(sweep_dir) / JOURNAL_FILE).resolve())
    storage = str(storage)
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def open_storage(url: str):
    """An optuna storage for ``url``: ``RDBStorage`` for a URL, ``JournalStorage`` on a file otherwise."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in url:
        return _rdb_storage(url)
    path = Path(url)
    if path.is_dir():
        raise StudyConfigError(
            f"hparams_search.storage={url} is a folder; give a journal file "
            f"(e.g. {path / JOURNAL_FILE}) or an RDB URL (sqlite:///study.db)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, attempts: int = 5):
    """``RDBStorage(url)``, retried: sweep processes started together on an empty database
    all create Optuna's tables, and all but one may fail on the same new table. A database
    that cannot be opened is a StudyConfigError (the URL shown without its password)."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except OperationalError as error:  # server unreachable, bad login, no such database
            shown = make_url(url).render_as_string(hide_password=True)
            why = str(error.orig or error).strip().splitlines()[0]
            raise StudyConfigError(
                f"hparams_search.storage={shown}: cannot open the database ({why}); check the "
                "server, user, password and database name"
            ) from error
        except SQLAlchemyError:  # e.g. a table another process created a moment ago
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None  # attempts < 1


def load_study(url: str, study_name: str, pruner: Any = None):
    """The existing study ``study_name`` in ``url`` (for a trial's job: report and prune)."""
    import optuna

    return optuna.load_study(
        study_name=study_name,
        storage=open_storage(url),
        sampler=optuna.samplers.RandomSampler(),  # jobs never sample
        pruner=pruner,
    )


# -- search space -----------------------------------------------------------------------------
def parse_search_space(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Hydra sweep overrides -> ({key: optuna distribution}, {key: fixed value as written}).

    ``choice(a, b)`` and a shuffled ``range`` -> categorical; ``range(start, stop, step)``
    -> int (or float) steps from start up to, not including, stop (Python's and Hydra's
    range); ``interval(low, high)`` -> float (Hydra parses its ends as floats: use
    ``range`` for ints); ``tag(log, interval(...))`` -> the same on a log scale.
    Anything else is a fixed value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
            continue
        value = override.value()
        if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            distributions[key] = CategoricalDistribution(choices)
        elif override.is_range_sweep():
            start, stop, step = value.start, value.stop, value.step
            if any(isinstance(v, float) for v in (start, stop, step)):
                count = math.ceil((stop - start) / step - 1e-9)
                distributions[key] = FloatDistribution(start, start + (count - 1) * step, step=step)
            else:
                count = len(range(int(start), int(stop), int(step)))
                high = int(start) + (count - 1) * int(step)
                distributions[key] = IntDistribution(int(start), high, step=int(step))
        elif override.is_interval_sweep():
            log_scale = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                distributions[key] = IntDistribution(value.start, value.end, log=log_scale)
            else:
                distributions[key] = FloatDistribution(
                    float(value.start), float(value.end), log=log_scale
                )
        else:
            raise StudyConfigError(
                f"hydra.sweeper.params.{key}: {override.input_line!r} is not a search space "
                "the Optuna sweeper knows; use choice(...), range(...), interval(...) or "
                "tag(log, interval(...))"
            )
    return distributions, fixed


def grid_size(distributions: Mapping[str, Any]) -> int:
    """How many points a grid over ``distributions`` has (all must be discrete)."""
    return math.prod(len(grid_values(name, d)) for name, d in distributions.items())


def grid_values(name: str, distribution: Any) -> list[Any]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    raise StudyConfigError(
        f"hparams_search.sampler=grid: hydra.sweeper.params.{name} is not discrete; "
        "a grid needs choice(...) or an int range(...) for every parameter "
        "(or use sampler=tpe/random for intervals)"
    )


# -- sampler and pruner -----------------------------------------------------------------------
def make_sampler(
    name: str | Mapping[str, Any],
    seed: int | None,
    distributions: Mapping[str, Any],
    n_startup_trials: int = 5,
):
    """A sampler by name (``tpe``, ``random``, ``grid``, ``cmaes``) or from a ``_target_`` config.

    TPE runs with ``constant_liar``, so parallel workers do not all sample next to one
    another's running trials. CMA-ES samples the numeric parameters; choices are drawn at
    random. Grid walks every combination of discrete parameters.
    """
    import optuna

    if isinstance(name, Mapping):
        from hydra.utils import instantiate

        return instantiate(dict(name))
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup_trials, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        space = {key: grid_values(key, d) for key, d in distributions.items()}
        return optuna.samplers.GridSampler(space, seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=n_startup_trials, warn_independent_sampling=False
        )
    raise StudyConfigError(
        f"hparams_search.sampler={name!r} is not a sampler; valid: {', '.join(SAMPLERS)} "
        "(or a config with _target_)"
    )


def make_pruner(
    name: str | None,
    n_startup_trials: int = 5,
    warmup_epochs: int = 1,
    max_epochs: int | None = None,
):
    """``median``: stop a trial whose value at an epoch is below the median of earlier trials
    at that epoch (after ``n_startup_trials`` trials and ``warmup_epochs`` epochs);
    ``hyperband``: successive halving from ``warmup_epochs`` to ``max_epochs`` epochs;
    ``none``: never prune."""
    import optuna

    if name in (None, "none", "null", False):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=warmup_epochs
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, warmup_epochs),
            max_resource=int(max_epochs) if max_epochs else "auto",
            reduction_factor=3,
        )
    raise StudyConfigError(
        f"hparams_search.pruner={name!r} is not a pruner; valid: {', '.join(PRUNERS)}"
    )


# -- budget and liveness ----------------------------------------------------------------------
def counts_toward_budget(trial: Any) -> bool:
    """Completed, pruned, running and (crashed/NaN) failed trials use up ``n_trials``."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    if trial.state == TrialState.FAIL:
        attrs = trial.system_attrs
        return INTERRUPTED_ATTR not in attrs and SURPLUS_ATTR not in attrs
    return False  # WAITING: queued, not started


def trials_left(trials: Iterable[Any], n_trials: int) -> int:
    return n_trials - sum(1 for t in trials if counts_toward_budget(t))


def is_surplus(trials: Iterable[Any], number: int, n_trials: int) -> bool:
    """Trial ``number`` came after the budget was full: ``n_trials`` trials precede it that
    count or are queued.

    Two workers that both saw one trial left and both asked get different numbers; the
    later one is surplus and is dropped without running. A queued trial ahead of it (the
    re-run of an interrupted trial, queued just after this worker found the queue empty)
    will be run by whoever asks next, so it holds its place in the budget.
    """
    from optuna.trial import TrialState

    ahead = sum(
        1
        for t in trials
        if t.number < number and (counts_toward_budget(t) or t.state == TrialState.WAITING)
    )
    return ahead >= n_trials


def stamp(storage: Any, trial_ids: Iterable[int]) -> None:
    """Record that this process still runs these trials (finished ones are skipped)."""
    from optuna.exceptions import UpdateFinishedTrialError

    now = time.time()
    for trial_id in list(trial_ids):
        try:
            storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, now)
        except UpdateFinishedTrialError:
            pass


def interrupt(study: Any, trial: Any, reason: str, requeue: bool = True) -> bool:
    """Mark a running trial failed (interrupted: it does not count) and queue its parameters again.

    Returns False when the trial had finished already (another process got there first,
    or its job finished it), and then queues nothing.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    trial_id = trial._trial_id
    try:
        storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, reason)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    params = storage.get_trial(trial_id).params
    if requeue and params:
        study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: trial.number})
    log.warning("trial %d marked failed (%s)%s", trial.number, reason, "; re-queued" * requeue)
    return True


def drop_surplus(study: Any, trial: Any) -> None:
    """Mark a trial asked for after the budget was full failed (surplus: never run, not counted)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_system_attr(trial._trial_id, SURPLUS_ATTR, True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass


def fail_stale_trials(study: Any, grace_period: float) -> list[int]:
    """Interrupt every running trial whose heartbeat is older than ``grace_period`` seconds.

    Trials without a segexp heartbeat (started by something else) are left alone.
    """
    from optuna.trial import TrialState

    now, stale = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None or now - float(beat) <= grace_period:
            continue
        age = f"no heartbeat for {now - float(beat):.0f} s: its sweep process is gone"
        if interrupt(study, trial, age):
            stale.append(trial.number)
    return stale


def state_counts(trials: Iterable[Any]) -> dict[str, int]:
    """{'complete': n, 'pruned': n, 'failed': n, 'interrupted': n, 'running': n, ...}, non-zero only."""
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for trial in trials:
        if trial.state == TrialState.FAIL and SURPLUS_ATTR in trial.system_attrs:
            key = "surplus"
        elif trial.state == TrialState.FAIL and INTERRUPTED_ATTR in trial.system_attrs:
            key = "interrupted"
        elif trial.state == TrialState.FAIL:
            key = "failed"
        else:
            key = trial.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts


__all__ = [
    "JOURNAL_FILE",
    "PRUNERS",
    "SAMPLERS",
    "StudyConfigError",
    "counts_toward_budget",
    "drop_surplus",
    "fail_stale_trials",
    "interrupt",
    "is_surplus",
    "load_study",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "parse_search_space",
    "stamp",
    "state_counts",
    "storage_url",
    "trials_left",
]
