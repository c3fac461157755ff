"""DDP with CPU processes (gloo): metrics equal a 1-process run; a DDP multirun runs each job once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segexp.run import distributed, ranks
from tests.conftest import CONF, REPO, TINY, run_script

# Split sizes divide by 2 processes: DistributedSampler would otherwise repeat samples.
DDP_TINY = [o for o in TINY if not o.startswith("data.batch_size")] + ["data.batch_size=2"]


# --- the pieces, without processes ------------------------------------------------------------


def test_child_argv_keeps_this_jobs_overrides_and_drops_the_sweep():
    argv = distributed.child_argv(
        "train.py",
        task_overrides=["trainer=ddp_cpu", "model=fpn", "data.class_names=[a,b]"],
        hydra_overrides=[
            "hydra.mode=MULTIRUN",
            "hydra/launcher=slurm",
            "hydra.sweep.dir=/x",
            "hydra.job.chdir=true",
        ],
    )
    assert argv == [
        "train.py",
        "hydra.job.chdir=true",
        "trainer=ddp_cpu",
        "model=fpn",
        "data.class_names=[a,b]",
    ]


def test_distributed_job_restores_env_and_argv(compose_cfg, monkeypatch):
    cfg = compose_cfg(["trainer=ddp_cpu"])
    for name in distributed.DDP_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "loss=ce,dice"])
    with distributed.distributed_job(cfg):
        # What Lightning's launcher leaves behind in the parent of a DDP job.
        os.environ.update(
            LOCAL_RANK="0",
            WORLD_SIZE="2",
            NODE_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT="4242",
        )
        sys.argv = ["changed"]
    assert not any(name in os.environ for name in distributed.DDP_ENV_VARS)
    assert sys.argv == ["train.py", "-m", "loss=ce,dice"]


def test_is_global_zero_reads_every_launcher(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert ranks.is_global_zero()
    for name in ("LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        monkeypatch.setenv(name, "1")
        assert not ranks.is_global_zero(), name
        monkeypatch.setenv(name, "0")
    assert ranks.is_global_zero()


def test_requeued_slurm_job_resumes_from_newest_checkpoint(compose_cfg, monkeypatch, tmp_path):
    cfg = compose_cfg()
    run = Path(cfg.paths.output_dir)
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 3}, last)
    monkeypatch.setenv("SLURM_JOB_ID", "7")

    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # first start: never resume
    assert distributed.resume_after_requeue(cfg) is None and cfg.ckpt_path is None

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert distributed.resume_after_requeue(cfg) == last and cfg.ckpt_path == str(last)

    # Lightning's signal-time checkpoint is newer than last.ckpt: it wins.
    hpc = run / "hpc_ckpt_1.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 5}, hpc)
    cfg.ckpt_path = None
    assert distributed.resume_after_requeue(cfg) == hpc

    # ... unless it is truncated (a kill mid-write): the newest one that loads wins.
    hpc.write_bytes(hpc.read_bytes()[:100])
    cfg.ckpt_path = None
    assert distributed.resume_after_requeue(cfg) == last

    cfg.ckpt_path = "/explicit.ckpt"  # the user's ckpt_path is never replaced
    assert distributed.resume_after_requeue(cfg) is None and cfg.ckpt_path == "/explicit.ckpt"


def test_lr_scaling_rules(compose_cfg):
    cfg = compose_cfg(
        ["trainer=ddp_cpu", "trainer.devices=4", "lr_scaling=linear", "optimizer.lr=0.001"]
    )
    assert distributed.scale_learning_rate(cfg) == pytest.approx(0.004)
    cfg = compose_cfg(
        ["trainer=ddp_cpu", "trainer.devices=4", "lr_scaling=sqrt", "optimizer.lr=0.001"]
    )
    assert distributed.scale_learning_rate(cfg) == pytest.approx(0.002)
    cfg = compose_cfg(["trainer=ddp_cpu", "optimizer.lr=0.001"])
    assert distributed.scale_learning_rate(cfg) is None and cfg.optimizer.lr == 0.001
    with pytest.raises(ValueError, match=r"lr_scaling='cube'.*valid: linear, sqrt"):
        distributed.scale_learning_rate(compose_cfg(["lr_scaling=cube"]))
    with pytest.raises(ValueError, match=r"trainer.devices='auto'.*set trainer.devices=N"):
        distributed.scale_learning_rate(compose_cfg(["lr_scaling=linear", "trainer.devices=auto"]))


def test_ddp_configs_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["trainer=ddp_cpu", "trainer.devices=3", "hydra/launcher=slurm"],
            return_hydra_config=True,
        )
        gpu = compose("train", overrides=["trainer=ddp", "trainer.sync_batchnorm=true"])
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("cpu", "ddp", 3)
    launcher = cfg.hydra.launcher  # (its submitit_folder would claim a run folder if resolved)
    assert launcher["tasks_per_node"] == 3 and launcher["nodes"] == 1  # one SLURM task per device
    assert launcher["additional_parameters"]["signal"] == "USR1@120"  # Lightning's requeue signal
    assert (gpu.trainer.accelerator, gpu.trainer.precision, gpu.trainer.sync_batchnorm) == (
        "gpu",
        "bf16-mixed",
        True,
    )


# --- real processes: a 2-job multirun of 2-process DDP jobs -----------------------------------


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory):
    """python train.py -m trainer=ddp_cpu trainer.devices=2 loss=ce,dice (tiny), run once for the module."""
    root = tmp_path_factory.mktemp("ddp")
    sweep = root / "sweep"
    result = run_script(
        "train.py", "-m", *DDP_TINY, f"paths.data_dir={root / 'data'}", "trainer=ddp_cpu", "trainer.devices=2",
        "loss=ce,dice", f"hydra.sweep.dir={sweep}", "hydra.job.chdir=false", cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return root, sweep, result.stdout + result.stderr


@pytest.mark.slow
def test_ddp_multirun_runs_each_job_exactly_once(ddp_sweep):
    root, sweep, output = ddp_sweep
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert sorted(p.name for p in root.iterdir()) == ["data", "sweep"]  # no stray run folders
    # Two jobs x two ranks: each rank joined exactly one process group per job.
    assert output.count("Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2") == 2
    assert output.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert "distributed_backend=gloo" in output
    for job, loss in (("0", "ce"), ("1", "dice")):
        folder = sweep / job
        assert f"loss={loss}" in (folder / ".hydra" / "overrides.yaml").read_text()
        assert "test/mIoU" in json.loads((folder / "metrics.json").read_text())
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        # The rank-1 child ran this job's overrides, in this job's folder (its log is there).
        child_log = (folder / "train_ddp_process_1.log").read_text()
        assert "process rank 1" in child_log and f"'loss={loss}'" in child_log
        assert str(folder) in child_log
        # Only rank 0 wrote the run metadata: the command re-runs this job alone (not a child's).
        command = json.loads((folder / "run_info.json").read_text())["command"]
        assert f"loss={loss}" in command and "-m" not in command and "loss=ce,dice" not in command
        assert not any("train_ddp_process" in part for part in command)


@pytest.mark.slow
def test_ddp_metrics_equal_one_process(ddp_sweep, compose_cfg):
    """Evaluate job 0's checkpoint with 1 process: the 2-process val/test numbers must match exactly.

    Training itself is not comparable between 1 and 2 processes (per-rank batch-norm
    statistics, a different shuffle); evaluating the same weights is, because the
    confusion matrix is summed over ranks and each split divides by 2.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.run.checkpoint import load_module

    root, sweep, _ = ddp_sweep
    ddp_metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    cfg = compose_cfg([*DDP_TINY, f"paths.data_dir={root / 'data'}", "loss=ce"])
    # After one epoch the best checkpoint holds the weights of the last validation, and it was tested.
    (best,) = (sweep / "0" / "checkpoints").glob("best-*.ckpt")
    model = load_module(best)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    datamodule = instantiate(cfg.data)
    # Only the headline goes through self.log (and so into validate()'s return value); every
    # figure, per-class ones included, is in callback_metrics, which metrics.json reads.
    trainer.validate(model, datamodule=datamodule)
    one_process = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, datamodule=datamodule)
    one_process.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    compared = [k for k in ddp_metrics if k.startswith(("val/", "test/"))]
    assert {"val/mIoU", "val/pixel_acc", "test/mIoU", "test/iou/circle", "test/loss"} <= set(
        compared
    )
    assert "test/acc/background" in compared and "val/dice/circle" in compared
    for key in compared:
        expected = one_process[key]
        if ddp_metrics[key] is None:  # NaN in JSON: a class absent from both prediction and target
            assert expected != expected, key
        else:
            assert ddp_metrics[key] == pytest.approx(expected, abs=1e-6), key
