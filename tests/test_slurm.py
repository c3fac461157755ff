"""hydra/launcher=slurm on a real SLURM cluster (scripts/local_slurm.sh start): sweeps, DDP, requeue.

Skipped, with the reason, when no cluster answers (`sinfo` missing or failing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, run_script


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
    if not any(state.startswith(("idle", "mix", "alloc")) for state in out.stdout.split()):
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
        assert 0.0 <= metrics["test/pixel_acc"] <= 1.0
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    jobs = submitit_jobs(sweep)
    assert len(jobs) == 2, jobs  # one SLURM (array) job per sweep job
    for job_id in jobs:
        assert "COMPLETED" in sacct_states(job_id), (job_id, sacct_states(job_id))
        log = next((sweep / ".submitit" / job_id).glob("*_0_log.out")).read_text()
        assert "SLURM auto-requeueing enabled" in log  # Lightning saw the SLURM environment


def test_slurm_ddp_job_requeues_and_resumes_in_same_run_folder(tmp_path, shared_data):
    """A 2-task DDP job (one SLURM task per rank), then SIGUSR1 (what SLURM sends signal_delay_s
    before the time limit): Lightning saves a checkpoint and requeues; the requeued job resumes
    in the same run folder and finishes.

    Enough epochs that the signal, sent as soon as the first last.ckpt appears, lands in the middle
    of training however fast the machine is (with 3 epochs, a fast CI box had finished fitting
    before the signal arrived, so the restart had nothing to resume).
    """
    sweep = tmp_path / "sweep"
    epochs = 20
    command = [
        sys.executable, "train.py", "-m", *DDP_TINY, "trainer=ddp_cpu", "trainer.devices=2",
        f"trainer.max_epochs={epochs}", shared_data, *SLURM, f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    log_path = tmp_path / "launch.log"
    with log_path.open("w") as log:
        launch = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        last = sweep / "0" / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 300
        while not last.is_file() and launch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.is_file(), log_path.read_text()[-3000:]
        (job_id,) = submitit_jobs(sweep)
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        launch.wait(timeout=480)
    finally:
        if launch.poll() is None:
            launch.kill()
            subprocess.run(["scancel", *submitit_jobs(sweep)], check=False)
    assert launch.returncode == 0, log_path.read_text()[-3000:]

    folder = sweep / ".submitit" / job_id
    assert "#SBATCH --ntasks-per-node=2" in next(folder.glob("*_submission.sh")).read_text()
    # SLURM started both ranks (no Lightning re-launch): one log per task, one rank each.
    task_logs = sorted(folder.glob("*_log.out"))
    assert len(task_logs) == 2, task_logs
    texts = [log.read_text() for log in task_logs]
    for rank, text in enumerate(texts):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text
    assert "Handling auto-requeue signal" in texts[0]
    assert "SLURM restart 1: resuming from" in texts[0]
    assert "Restored all states from the checkpoint" in texts[0]
    states = sacct_states(job_id)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states

    # Same run folder: one job folder, Lightning's signal-time checkpoint in it, the run finished.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit") == ["0"]
    assert list((sweep / "0").glob("hpc_ckpt_*.ckpt"))
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
