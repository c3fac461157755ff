"""hydra/launcher=slurm on a real SLURM cluster (scripts/local_slurm.sh start): sweeps, DDP, requeue.

Skipped, with the reason, when no cluster answers (`sinfo` missing or failing).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, assert_means_of_classes, run_script


def cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when a node is up."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (`sinfo` not found); start one with scripts/local_slurm.sh start"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out: slurmctld is not answering (scripts/local_slurm.sh start)"
    if out.returncode != 0:
        return f"`sinfo` failed: {out.stderr.strip()[:200]} (scripts/local_slurm.sh start)"
    # "completing": up, and finishing a job's clean-up (a job submitted now waits for it). A
    # test that starts right after another's job ends finds the node in that state.
    up = ("idle", "mix", "alloc", "completing")
    if not any(state.startswith(up) for state in out.stdout.split()):
        return f"no SLURM node is up (states: {out.stdout.split()}); scripts/local_slurm.sh start"
    return None


CLUSTER_PROBLEM = cluster_problem()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=str(CLUSTER_PROBLEM)),
]

# Sized for a 2-core, single-node cluster: one CPU and 2 GB per task.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=15",
]
DDP_TINY = [o for o in TINY if not o.startswith("data.batch_size")] + ["data.batch_size=2"]


def sacct_states(job_id: str, timeout: float = 60) -> list[str]:
    """Every state accounting recorded for a job (one line per start, so a requeue shows twice),
    once the last one is final: submitit returns as soon as the result file is written, a few
    seconds before the job's processes have exited."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-D", "-X", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
        )
        states = out.stdout.split()
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.fixture
def shared_data(compose_cfg) -> str:
    """The tiny shapes data, generated before submitting: concurrent jobs that each generate it
    into one empty folder race (one replaces the folder while another reads it)."""
    from hydra.utils import instantiate

    cfg = compose_cfg()
    instantiate(cfg.data.generate)()
    return f"paths.data_dir={cfg.paths.data_dir}"


def submitit_jobs(sweep: Path) -> list[str]:
    """The SLURM job ids submitit ran for this sweep: `<id>` or `<array id>_<task>`, one per sweep job.

    Each has a folder holding its pickled call and logs (an array's own folder holds only the script).
    """
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


def test_slurm_sweep_runs_two_jobs(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py", "-m", *TINY, "trainer.accelerator=cpu", shared_data, *SLURM,
        "loss=ce,dice", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit") == [
        "0",
        "1",
    ]
    for job, loss in (("0", "ce"), ("1", "dice")):
        assert f"loss={loss}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert_means_of_classes(metrics, "test")
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2, jobs  # one SLURM (array) job per sweep job
    for job_id in jobs:
        assert "COMPLETED" in sacct_states(job_id), (job_id, sacct_states(job_id))
        log = next((sweep / ".submitit" / job_id).glob("*_0_log.out")).read_text()
        assert "SLURM auto-requeueing enabled" not in log  # segexp requeues, not Lightning


# Signals sent to the requeue test's job: two in `make test` (the second requeues a job that
# was requeued already), the 20 in `make stress`.
REQUEUE_SIGNALS = int(os.environ.get("SEGEXP_REQUEUE_SIGNALS", "2"))


def task_logs(folder: Path) -> list[str]:
    """Each SLURM task's stdout + stderr (a requeued job appends to the same files)."""
    return [
        out.read_text() + out.with_suffix(".err").read_text()
        if out.with_suffix(".err").is_file()
        else out.read_text()
        for out in sorted(folder.glob("*_log.out"))
    ]


def wait_until(condition, what: str, timeout: float, launch: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert launch.poll() is None, (
            f"the launcher exited while waiting for {what}:\n{log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, (
            f"no {what} within {timeout} s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.1)


def test_slurm_ddp_job_requeues_on_every_signal_and_resumes_in_same_run_folder(
    tmp_path, shared_data
):
    """A 2-task DDP job (one SLURM task per rank) gets SIGUSR1 (what SLURM sends signal_delay_s
    before the time limit) REQUEUE_SIGNALS times, each at a random moment of training,
    validation or checkpoint saving (a random delay after the restarted job's first new
    checkpoint). Every time both ranks stop at the same safe point, save last.ckpt, rank 0
    requeues, and the requeued job resumes in the same run folder; no hang, no new folder.

    The sweep folder goes through the unique_dir resolver, so a requeued job that named its
    folder anew would land in sweep-1 and fail the test.
    """
    seed = int(os.environ.get("SEGEXP_REQUEUE_SEED", time.time_ns() % 10**6))
    print(f"signal moments: SEGEXP_REQUEUE_SEED={seed}")
    rng = random.Random(seed)
    signals = REQUEUE_SIGNALS
    # Each start writes one checkpoint of its own, then gets its signal within a second: an
    # epoch of this tiny run takes about that, so the moments fall mid-epoch and at epoch ends,
    # and a start trains about three epochs at most. A CI run with 3 s of delay and 15 epochs
    # finished training before the last signal on a quiet machine; this leaves room to spare.
    epochs = 3 * signals + 8
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "train.py", "-m", *DDP_TINY, "trainer=ddp_cpu", "trainer.devices=2",
        f"trainer.max_epochs={epochs}", shared_data, *SLURM,
        f"hydra.sweep.dir=${{unique_dir:{sweep}}}",
    ]  # fmt: skip
    log_path = tmp_path / "launch.log"
    with log_path.open("w") as log:
        launch = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    delays = []
    try:
        wait_until(last.is_file, "first last.ckpt", 300, launch, log_path)
        (job_id,) = submitit_jobs(sweep)
        folder = sweep / ".submitit" / job_id
        for number in range(signals):
            # This start is training: it wrote a checkpoint of its own.
            started = last.stat().st_mtime if number else 0.0
            wait_until(
                lambda started=started: last.stat().st_mtime > started,
                f"checkpoint of start {number}", 300, launch, log_path,
            )  # fmt: skip
            delays.append(rng.uniform(0.0, 1.0))
            time.sleep(delays[-1])
            subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
            wait_until(
                lambda n=number: sum(t.count("Requeued SLURM job") for t in task_logs(folder)) > n,
                f"requeue {number + 1}", 120, launch, log_path,
            )  # fmt: skip
            wait_until(
                lambda n=number: f"SLURM restart {n + 1}: resuming from" in task_logs(folder)[0],
                f"restart {number + 1}", 300, launch, log_path,
            )  # fmt: skip
        launch.wait(timeout=600)
    finally:
        if launch.poll() is None:
            launch.kill()
            subprocess.run(["scancel", *submitit_jobs(sweep)], check=False)
    assert launch.returncode == 0, log_path.read_text()[-3000:]

    assert "#SBATCH --ntasks-per-node=2" in next(folder.glob("*_submission.sh")).read_text()
    # SLURM started both ranks (no Lightning re-launch): one log per task, one rank each.
    texts = task_logs(folder)
    assert len(texts) == 2, list(folder.iterdir())
    for rank, text in enumerate(texts):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text
        assert "Handling auto-requeue signal" not in text  # Lightning's handler stayed off
        assert text.count("segexp: received SIGUSR1") == signals, (rank, delays)
    # SLURM's own record first: exactly one requeue per signal, then the run completed.
    states = sacct_states(job_id)
    assert states == ["REQUEUED"] * signals + ["COMPLETED"], (states, delays)
    # The SIGTERM SLURM sends with each requeue stopped nothing a second time. It once did:
    # Lightning's handler, back on the way out, failed a broadcast to the rank that had left,
    # and the job was logged as failed with a traceback (a fourth "Requeued" line, in it).
    for rank, text in enumerate(texts):
        assert "received SIGTERM" not in text and "Received SIGTERM" not in text, rank
        assert "Traceback" not in text and "job failed" not in text, (rank, text[-3000:])
    assert not (sweep / "0" / "error.txt").exists()
    assert texts[0].count("Requeued SLURM job") == signals, delays  # rank 0 announces each
    for number in range(1, signals + 1):
        assert f"SLURM restart {number}: resuming from {last}" in texts[0]
    assert "Restored all states from the checkpoint" in texts[0]

    # Same run folder: one sweep folder (no sweep-1), one job folder, the run finished.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("sweep")) == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit") == ["0"]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert "test/mIoU" in metrics and "val/mIoU" in metrics
    import torch

    # Trained to the end: the last epoch, and at least epochs x 2 steps (8 images, 2 ranks x 2
    # per batch; a resume from a mid-epoch checkpoint may repeat part of an epoch, never skip one).
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == epochs - 1 and state["global_step"] >= 2 * epochs, (
        state["epoch"],
        state["global_step"],
    )


def test_slurm_optuna_study_with_pruning(tmp_path, shared_data):
    """4 trials of an Optuna study, 2 SLURM jobs at a time, median pruner on: each job
    re-attaches to its trial from inside SLURM and reports every epoch; a pruned trial ends
    pruned (study and sweep summary), not failed."""
    import optuna
    from optuna.trial import TrialState

    from segexp.track.study import open_storage

    sweep = tmp_path / "sweep"
    epochs = 3
    result = run_script(
        "train.py", "hparams_search=optuna", *TINY, f"trainer.max_epochs={epochs}", "test=false",
        shared_data, *SLURM, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        "~hydra.sweeper.params.model", "hparams_search.pruner=median",
        "hparams_search.n_startup_trials=1", "hparams_search.warmup_epochs=1",
        # a learning rate from useless to good: the useless ones are the ones to prune
        "optimizer.lr=tag(log, interval(1e-7, 1e-1))",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    study = optuna.load_study(
        study_name="segexp", storage=open_storage(str(sweep / "optuna.journal"))
    )
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {
        TrialState.COMPLETE,
        TrialState.PRUNED,
    }
    assert len(submitit_jobs(sweep)) == 4  # every trial ran as a SLURM job
    compare = (sweep / "compare.md").read_text()
    for trial in trials:
        folder = sweep / str(trial.number)
        assert trial.intermediate_values, trial.number  # reported from inside the SLURM job
        if trial.state == TrialState.PRUNED:
            assert (folder / "pruned.txt").is_file() and not (folder / "metrics.json").exists()
            assert len(trial.intermediate_values) < epochs
        else:
            assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
            assert (folder / "metrics.json").is_file()
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert compare.count("| pruned |") == pruned and "| failed |" not in compare
