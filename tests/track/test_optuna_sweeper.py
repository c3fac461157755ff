"""segexp's Optuna sweeper: search space, shared budget, stale trials, pruning, parallel workers."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from segexp.track import study as studies
from segexp.track.pruning import OptunaPruning
from tests.conftest import TINY, run_script, start_script, stop_started

# The sweep extra; without it (only [dev] installed) this module is skipped, not a collection error.
optuna = pytest.importorskip(
    "optuna", reason="the sweep extra is not installed (pip install -e .[sweep])"
)
from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(tmp_path: Path, name: str = "s") -> optuna.Study:
    storage = studies.open_storage(studies.storage_url(None, tmp_path))
    return optuna.create_study(study_name=name, storage=storage, direction="maximize")


def test_search_space_keeps_hydra_syntax() -> None:
    distributions, fixed = studies.parse_search_space(
        [
            "model=choice(unet_small, fpn)",
            "loss=ce,dice",
            "data.batch_size=range(2, 9, 2)",  # stop excluded, as in Hydra and Python
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "optimizer.weight_decay=interval(0.0, 0.1)",
            "trainer.max_epochs=interval(1, 5)",  # Hydra's interval ends are floats
            "seed=3",
        ]
    )
    assert distributions == {
        "model": CategoricalDistribution(["unet_small", "fpn"]),
        "loss": CategoricalDistribution(["ce", "dice"]),
        "data.batch_size": IntDistribution(2, 8, step=2),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "optimizer.weight_decay": FloatDistribution(0.0, 0.1),
        "trainer.max_epochs": FloatDistribution(1.0, 5.0),
    }
    assert fixed == {"seed": "3"}
    grid = {k: distributions[k] for k in ("model", "loss", "data.batch_size")}
    assert studies.grid_size(grid) == 2 * 2 * 4
    with pytest.raises(studies.StudyConfigError, match="optimizer.lr.*not discrete"):
        studies.make_sampler("grid", 0, distributions)
    with pytest.raises(studies.StudyConfigError, match="valid: median, hyperband, none"):
        studies.make_pruner("asha")


def test_storage_url(tmp_path: Path) -> None:
    assert studies.storage_url(None, tmp_path) == str(tmp_path.resolve() / "optuna.journal")
    assert studies.storage_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert studies.storage_url("rel.journal", tmp_path) == str(Path("rel.journal").resolve())
    with pytest.raises(studies.StudyConfigError, match="is a folder"):
        studies.open_storage(str(tmp_path))


def test_budget_counts_every_worker_and_drops_surplus(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.FAIL)  # a crash or NaN: counts
    running = study.ask()  # another worker's: counts
    assert studies.trials_left(study.trials, 5) == 1
    # Two workers both saw one slot left and both asked: the later trial is surplus.
    first, second = study.ask(), study.ask()
    assert not studies.is_surplus(study.trials, first.number, 5)
    assert studies.is_surplus(study.trials, second.number, 5)
    studies.drop_surplus(study, second)
    assert studies.trials_left(study.trials, 5) == 0
    assert studies.state_counts(study.trials) == {
        "complete": 2,
        "failed": 1,
        "running": 2,
        "surplus": 1,
    }
    assert running.number != first.number


def test_a_new_trial_behind_a_queued_rerun_is_surplus(tmp_path: Path) -> None:
    """Worker C interrupts a dead trial and queues its re-run; worker B, which found the queue
    still empty a moment before, creates a new trial behind it. Only one of the two may run
    (three sweeps on PostgreSQL once ran 7 trials of 6 this way)."""
    study = new_study(tmp_path)
    dist = {"x": FloatDistribution(0.0, 1.0)}
    for value in (0.1, 0.2, 0.3, 0.4):
        study.tell(study.ask(dist), value)
    dead = study.ask(dist)
    assert studies.interrupt(study, dead, "its sweep process is gone")  # C queues the re-run
    assert studies.trials_left(study.get_trials(deepcopy=False), 5) == 1  # B and C: one left
    late = study._storage.create_new_trial(study._study_id)  # B: asked with an empty queue
    trials = study.get_trials(deepcopy=False)
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    late_number = study._storage.get_trial_number_from_id(late)
    assert queued.number < late_number
    assert studies.is_surplus(trials, late_number, 5)  # the queued re-run holds the last slot
    retry = study.ask(dist)  # C pops the re-run
    assert retry.number == queued.number
    assert not studies.is_surplus(study.get_trials(deepcopy=False), retry.number, 5)


def test_stale_trial_is_interrupted_once_and_requeued(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    dist = {"x": FloatDistribution(0.0, 1.0)}
    alive, dead = study.ask(dist), study.ask(dist)
    studies.stamp(study._storage, [alive._trial_id, dead._trial_id])
    assert studies.fail_stale_trials(study, grace_period=60) == []
    time.sleep(1.2)
    studies.stamp(study._storage, [alive._trial_id])  # the other one's process is gone
    other = optuna.load_study(
        study_name="s", storage=studies.open_storage(studies.storage_url(None, tmp_path))
    )
    assert studies.fail_stale_trials(study, grace_period=1.0) == [dead.number]
    assert studies.fail_stale_trials(other, grace_period=1.0) == []  # nobody fails it twice
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert not studies.counts_toward_budget(trials[dead.number])
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs[studies.RETRY_OF_ATTR] == dead.number
    retry = study.ask(dist)  # the queued parameters come first
    assert retry.number == queued.number and retry.params == trials[dead.number].params


def fake_trainer(epoch: int, value: float) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=epoch,
        is_global_zero=True,
        callback_metrics={"val/mIoU": value},
        strategy=SimpleNamespace(broadcast=lambda x: x),
        should_stop=False,
    )


def test_pruning_callback_reports_prunes_and_tells_the_study(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    for _ in range(2):  # two finished trials that reached 0.5 after every epoch
        trial = study.ask()
        for step in (1, 2, 3):
            trial.report(0.5, step)
        study.tell(trial, 0.5)
    number = study.ask().number  # the sweeper asked; the job re-attaches by number
    url = studies.storage_url(None, tmp_path)
    callback = OptunaPruning(url, "s", number, pruner="median", n_startup_trials=2, warmup_epochs=2)
    callback.setup(fake_trainer(0, 0.0), None, "fit")
    trainer = fake_trainer(0, 0.1)
    callback.on_validation_end(trainer, None)  # epoch 1: below the median, but in warm-up
    assert not trainer.should_stop
    trainer = fake_trainer(1, 0.2)
    callback.on_validation_end(trainer, None)  # epoch 2: its best is below: stop after it
    assert trainer.should_stop and callback.pruned_at == (2, pytest.approx(0.2))
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 2"):
        callback.on_fit_end(trainer, None)
    pruned = study.get_trials()[number]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.1, 2: 0.2}
    # The same config reproduced later: the trial has finished, nothing is reported.
    again = OptunaPruning(url, "s", number, pruner="median")
    again.setup(fake_trainer(0, 0.0), None, "fit")
    again.on_validation_end(fake_trainer(0, 0.0), None)
    assert study.get_trials()[number].intermediate_values == {1: 0.1, 2: 0.2}
    # No trial (a plain run): nothing to attach to.
    idle = OptunaPruning(None, "s", None)
    idle.setup(fake_trainer(0, 0.0), None, "fit")
    idle.on_validation_end(fake_trainer(0, 0.0), None)


# -- whole sweeps ----------------------------------------------------------------------------
N_TRIALS = 5


def sweep_command(sweep_dir: Path, storage: Path | str, data_dir: Path, n_trials: int = N_TRIALS):
    return [
        "train.py",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        "~hydra.sweeper.params.model",  # keep the tiny default model
        "hparams_search.pruner=none",
        "hparams_search.heartbeat_interval=1",
        "hparams_search.grace_period=4",
        f"hparams_search.storage='{storage}'",
        *TINY,
        "test=false",
        "callbacks.image_logger=null",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def finished_trials(sweep_dir: Path) -> set[str]:
    return {p.parent.name for p in sweep_dir.glob("*/metrics.json")}


def share_and_kill(
    storage: Path | str, tmp_path: Path, data_dir: Path, workers: int, n_trials: int
):
    """``workers`` sweeps on one study; the first is killed (SIGKILL) in the middle of its
    second trial and started again. Returns (the killed trial's number, {worker: folder})."""
    dirs = {name: tmp_path / name for name in "abcdefgh"[:workers]}
    logs = {name: tmp_path / f"{name}.log" for name in dirs}
    command = {name: sweep_command(d, storage, data_dir, n_trials) for name, d in dirs.items()}
    procs = {name: start_script(*command[name], output=logs[name]) for name in dirs}
    try:
        # Kill A while its second trial trains (folder created, no metrics yet).
        deadline = time.monotonic() + 600
        killed = None
        while killed is None:
            assert procs["a"].poll() is None, logs["a"].read_text()[-3000:]
            assert time.monotonic() < deadline, logs["a"].read_text()[-3000:]
            started = sorted(p for p in dirs["a"].glob("[0-9]*") if p.is_dir())
            running = [p for p in started if not (p / "metrics.json").exists()]
            if len(started) >= 2 and running and (running[0] / ".hydra").is_dir():
                killed = running[0].name
                os.kill(procs["a"].pid, signal.SIGKILL)
            time.sleep(0.2)
        procs["a"].wait(timeout=30)
        logs["a"] = tmp_path / "a-again.log"
        procs["a"] = start_script(*command["a"], output=logs["a"])
        for name, proc in procs.items():
            assert proc.wait(timeout=600) == 0, logs[name].read_text()[-3000:]
    finally:
        stop_started(*procs.values())
    return int(killed), dirs


def check_shared_study(study, killed: int, dirs: dict[str, Path], n_trials: int) -> None:
    """N completed trials, the killed one failed (interrupted) and re-queued once with its
    parameters, no trial run twice, every worker ran some, values as in metrics.json."""
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    table = [  # printed when a check fails: who ran what, in order
        (t.number, studies.state_counts([t]), t.user_attrs.get(studies.RETRY_OF_ATTR))
        for t in trials
    ]
    assert len(complete) == n_trials, (studies.state_counts(trials), table)
    interrupted = trials[killed]
    assert interrupted.state == TrialState.FAIL
    assert studies.INTERRUPTED_ATTR in interrupted.system_attrs
    retries = [t for t in trials if t.user_attrs.get(studies.RETRY_OF_ATTR) == killed]
    assert len(retries) == 1 and retries[0].params == interrupted.params
    # No trial ran twice: each completed trial has one folder with metrics, in one sweep folder.
    done = {name: finished_trials(d) for name, d in dirs.items()}
    names = list(done)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not done[first] & done[second], done
    assert set().union(*done.values()) == {str(t.number) for t in complete}, done
    assert all(done.values()), done  # every worker worked
    for trial in complete:
        owner = next(name for name in names if str(trial.number) in done[name])
        value = json.loads((dirs[owner] / str(trial.number) / "metrics.json").read_text())
        assert math.isclose(value["val/mIoU"], trial.value, rel_tol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on a quiet 2-core machine
def test_two_workers_share_one_study_and_a_killed_one_resumes(
    tmp_path: Path, data_dir: Path, compose_cfg
) -> None:
    """Two sweeps on one journal file run N trials between them, none twice; one is killed
    (SIGKILL) in the middle of a trial and started again: the study still ends with N
    completed trials, the killed trial failed (interrupted) and its parameters re-run."""
    from hydra.utils import instantiate

    instantiate(compose_cfg().data.generate)()  # generated once, before two processes read it
    journal = tmp_path / "study.journal"
    killed, dirs = share_and_kill(journal, tmp_path, data_dir, workers=2, n_trials=N_TRIALS)
    study = optuna.load_study(study_name="segexp", storage=studies.open_storage(str(journal)))
    check_shared_study(study, killed, dirs, N_TRIALS)


PRUNE_EPOCHS = 3


@pytest.fixture(scope="module")
def pruned_sweep(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-trial sweep on tiny data, no SLURM, the median pruner on after one trial. The
    trials' learning rates are queued in the study first: trial 0 barely moves (lr 1e-7) and
    keeps the untrained network's score; trial 1 (lr 0.01) scores below it after its first
    epoch (measured: 0.007 against 0.044 val/mIoU), so the pruner has a trial to stop."""
    from segexp.track.study import open_storage

    sweep = tmp_path_factory.mktemp("pruned") / "sweep"
    sweep.mkdir()
    study = optuna.create_study(
        study_name="segexp",
        storage=open_storage(str(sweep / "optuna.journal")),
        direction="maximize",
    )
    for lr in (1e-7, 0.01):
        study.enqueue_trial({"optimizer.lr": lr})
    result = run_script(
        "train.py", "hparams_search=optuna", *TINY,
        f"trainer.max_epochs={PRUNE_EPOCHS}", "test=false", "callbacks.image_logger=null",
        "hydra.sweeper.n_trials=2", "~hydra.sweeper.params.model", "loss=ce",
        "optimizer.weight_decay=0.0", "optimizer.lr=tag(log, interval(1e-7, 1e-1))",
        "hparams_search.pruner=median", "hparams_search.n_startup_trials=1",
        "hparams_search.warmup_epochs=1", f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}", timeout=900,
    )  # fmt: skip
    return sweep, result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_median_pruner_stops_a_trial_of_a_real_run(pruned_sweep) -> None:
    """Real Lightning runs report each epoch's val/mIoU; the median pruner stops trial 1 at the
    first epoch where its best is below trial 0's value at that epoch: the run stops there
    (no later epoch is reported), and the study, the run folder and the sweep's results
    record a pruned trial."""
    sweep, result = pruned_sweep
    assert result.returncode == 0, result.stderr[-4000:]
    study = optuna.load_study(
        study_name="segexp", storage=studies.open_storage(str(sweep / "optuna.journal"))
    )
    first, second = study.get_trials()
    assert first.state == TrialState.COMPLETE and second.state == TrialState.PRUNED
    assert sorted(first.intermediate_values) == list(range(1, PRUNE_EPOCHS + 1))
    # By hand: the median of one completed trial is its value; prune at the first epoch
    # (warm-up: 1) where the running trial's best so far is below it.
    reported = second.intermediate_values
    stop = next(
        epoch
        for epoch in range(1, PRUNE_EPOCHS + 1)
        if max(reported[e] for e in range(1, epoch + 1)) < first.intermediate_values[epoch]
    )
    assert sorted(reported) == list(range(1, stop + 1)) and stop < PRUNE_EPOCHS, reported
    pruned = sweep / str(second.number)
    assert f"pruned after epoch {stop}" in (pruned / "pruned.txt").read_text()
    assert not (pruned / "metrics.json").exists() and (sweep / "0" / "metrics.json").is_file()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 1, "pruned": 1} and results["best_trial"] == 0


def epoch_values(csv_file: Path, key: str = "val/mIoU") -> dict[int, float]:
    """{epochs trained: value} of ``key`` in a run's csv/metrics.csv."""
    with csv_file.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(key)]
    return {int(row["epoch"]) + 1: float(row[key]) for row in rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> dict:
    """GET ``url`` as JSON, retrying while ``server`` starts (its output goes to ``log``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read().decode())
        except OSError:
            assert server.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no answer from {url} in {timeout} s"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dashboard_command_the_sweep_prints_shows_its_trials(pruned_sweep, tmp_path: Path) -> None:
    """The sweep prints `optuna-dashboard <storage>`; that command, run as printed, serves
    segexp's study: each trial in the state the sweep recorded, with the val/mIoU its run
    logged after each epoch (its csv/metrics.csv) as intermediate values."""
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    if not dashboard.exists():
        pytest.skip("no optuna-dashboard next to Python (pip install -e .[sweep])")
    sweep, result = pruned_sweep
    match = re.search(r"Follow it with: optuna-dashboard (\S+)", result.stdout + result.stderr)
    assert match, (result.stdout + result.stderr)[-3000:]
    port, log = free_port(), tmp_path / "dashboard.log"
    command = [str(dashboard), match.group(1), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        summaries = get_json(base, server, log)["study_summaries"]
        (study_id,) = [s["study_id"] for s in summaries if s["study_name"] == "segexp"]
        trials = get_json(f"{base}/{study_id}?after=0", server, log)["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [(t["number"], t["state"]) for t in trials] == [(0, "Complete"), (1, "Pruned")]
    for trial in trials:
        logged = epoch_values(sweep / str(trial["number"]) / "csv" / "metrics.csv")
        shown = {v["step"]: v["value"] for v in trial["intermediate_values"]}
        assert shown == pytest.approx(logged, rel=1e-6), trial["number"]
