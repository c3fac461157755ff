"""segexp.track.loggers: W&B offline runs, their ids, names, groups, config and summary, read back with wandb's tooling."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segexp.run.job import sweep_group
from segexp.run.wandb_id import WANDB_ID_FILE, choose_wandb_id
from segexp.run.wandb_id import read_wandb_id as wandb_run_id
from segexp.track.loggers import finish_wandb, offline_runs, read_offline_run, wandb_mode
from tests.conftest import REPO, TINY, run_script


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in (
        "WANDB_RUN_ID",
        "WANDB_SWEEP_ID",
        "RANK",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "WANDB_API_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_wandb_mode_never_prompts(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path))  # no ~/.netrc
    clean_env.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    assert wandb_mode(offline=True) == "offline"
    clean_env.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_run_id_saved_and_reused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert wandb_run_id(tmp_path) is None
    first = choose_wandb_id(tmp_path, None)
    assert len(first) == 8 and first.isalnum() and first == first.lower()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    assert choose_wandb_id(tmp_path, None) == first  # a resumed run keeps its W&B run
    assert wandb_run_id(tmp_path) == first
    assert choose_wandb_id(tmp_path, "explicit1") == "explicit1" == wandb_run_id(tmp_path)

    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    clean_env.setenv("WANDB_RUN_ID", "fromagent")  # `wandb agent` owns the id of a sweep run
    assert choose_wandb_id(agent_dir, None) == "fromagent" == wandb_run_id(agent_dir)

    rank1_dir = tmp_path / "rank1"
    rank1_dir.mkdir()
    clean_env.delenv("WANDB_RUN_ID")
    clean_env.setenv("LOCAL_RANK", "1")
    assert choose_wandb_id(rank1_dir, None) != first
    assert not (rank1_dir / WANDB_ID_FILE).exists()  # only rank 0 writes
    for name in ("RANK", "NODE_RANK", "SLURM_PROCID"):  # the one rank test reads every launcher
        clean_env.setenv("LOCAL_RANK", "0")
        clean_env.setenv(name, "2")
        choose_wandb_id(rank1_dir, None)
        assert not (rank1_dir / WANDB_ID_FILE).exists(), name
        clean_env.delenv(name)


def test_finish_wandb_puts_final_metrics_in_summary(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wandb

    clean_env.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="segexp-test", dir=str(tmp_path), mode="offline")
    run.log({"val/mIoU": 0.1})
    finish_wandb({"val/mIoU": 0.75, "test/iou/star": float("nan")})
    assert wandb.run is None
    finish_wandb({"val/mIoU": 1.0})  # nothing to finish: a no-op, not an error
    summary = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*")))["summary"]
    assert summary["val/mIoU"] == 0.75
    assert summary.get("test/iou/star") is None


@pytest.fixture(scope="module")
def wandb_multirun(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """`train.py -m model=unet,fpn` on tiny data with W&B offline: the Done-when sweep."""
    sweep_dir = tmp_path_factory.mktemp("wandb_sweep") / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model=unet,fpn",
        *TINY,
        "logger=wandb",
        "callbacks.image_logger.num_images=3",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_multirun_gives_one_run_per_job_in_one_group(wandb_multirun: Path) -> None:
    git_commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    runs = {}
    for job, arch in (("0", "unet"), ("1", "fpn")):
        job_dir = wandb_multirun / job
        (offline,) = offline_runs(
            job_dir
        )  # exactly one W&B run per job (wandb.finish between jobs)
        run = read_offline_run(offline)
        runs[job] = run
        assert run["state"] == "finished"
        assert run["run_id"] == wandb_run_id(job_dir)
        assert run["group"] == sweep_group(wandb_multirun)
        assert run["name"] == f"{job}:model={arch}"  # the fixed TINY overrides are left out

        config = run["config"]
        assert config["model"]["arch"] == arch  # the resolved config
        assert config["hydra_choices"]["model"] == arch
        saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == saved["optimizer"]["lr"]
        assert (
            config["hydra_choices"]["loss"] == "ce_dice"
            and config["hydra_choices"]["logger"] == "wandb"
        )
        assert f"model={arch}" in config["overrides"]
        assert config["run"]["git_commit"] == git_commit
        assert config["run"]["packages"]["torch"] == metadata.version("torch")
        assert config["run"]["dir"] == str(job_dir.resolve())
        assert "train.py" in config["run"]["command"]

        final = json.loads((job_dir / "metrics.json").read_text())
        for key in ("val/mIoU", "test/mIoU", "test/pixel_acc"):
            assert run["summary"][key] == pytest.approx(final[key])
    assert runs["0"]["run_id"] != runs["1"]["run_id"]
    # The sweep summary (a Hydra callback) ranks both jobs by val/mIoU.
    summary = (wandb_multirun / "compare.md").read_text()
    assert summary.startswith("| rank | run | status | val/mIoU") and summary.count("| done |") == 2


@pytest.mark.slow
def test_multirun_logs_mask_images_and_tables(wandb_multirun: Path) -> None:
    job_dir = wandb_multirun / "0"
    (offline,) = offline_runs(job_dir)
    run = read_offline_run(offline)
    examples = run["summary"]["val/examples"]
    assert examples["count"] == 3
    config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    size = config["data"]["generate"]["image_size"]
    val_masks = sorted(
        Path(config["paths"]["data_dir"]).glob(f"shapes-{size}px-seed*/masks/val/*.png")
    )
    for index, masks in enumerate(examples["all_masks"]):
        assert set(masks) == {"ground_truth", "prediction"}
        ground_truth = np.array(Image.open(offline / "files" / masks["ground_truth"]["path"]))
        # The logged ground truth is the index-th validation mask, pixel for pixel.
        np.testing.assert_array_equal(ground_truth, np.array(Image.open(val_masks[index])))
        prediction = np.array(Image.open(offline / "files" / masks["prediction"]["path"]))
        assert (
            prediction.shape == ground_truth.shape
            and prediction.max() < config["data"]["num_classes"]
        )
    for name in examples["filenames"]:
        assert (offline / "files" / name).exists()

    table_ref = run["summary"]["test/per_class_iou"]
    table = json.loads((offline / "files" / table_ref["path"]).read_text())
    final = json.loads((job_dir / "metrics.json").read_text())
    assert [row[0] for row in table["data"]] == config["data"]["class_names"]
    for row in table["data"]:
        expected = final[f"test/iou/{row[0]}"]
        assert row[1] == (pytest.approx(expected) if expected is not None else None)
    assert "test/confusion_matrix_table" in run["summary"]


def test_csv_logger_keeps_earlier_rows_when_a_run_resumes(tmp_path):
    """Lightning's CSVLogger deletes metrics.csv when a new logger opens the folder; a resumed
    run must append to it, keeping the epochs before the stop (and new columns merge in)."""
    import csv

    from segexp.track.csv_logger import ResumableCSVLogger

    first = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
    first.log_metrics({"val/mIoU": 0.25}, step=0)
    first.log_metrics({"val/mIoU": 0.5}, step=1)
    first.save()
    resumed = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
    resumed.log_metrics({"val/mIoU": 0.75, "test/mIoU": 0.7}, step=2)
    resumed.save()
    with (tmp_path / "csv" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["step"], row["val/mIoU"]) for row in rows] == [
        ("0", "0.25"),
        ("1", "0.5"),
        ("2", "0.75"),
    ]
    assert rows[-1]["test/mIoU"] == "0.7" and rows[0]["test/mIoU"] == ""


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_online_wandb_without_network_logs_offline_at_once(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An API key but no reachable server (W&B alone stalls ~2 min, then a traceback): the run
    logs offline within seconds, with one warning that says why and how to sync."""
    import time

    import pytorch_lightning.loggers  # noqa: F401  (imported before the clock starts)

    from segexp.track.loggers import wandb_logger, wandb_server_problem

    clean_env.setenv("HOME", str(tmp_path))  # no ~/.netrc
    clean_env.delenv("WANDB_MODE", raising=False)
    clean_env.setenv("WANDB_API_KEY", "x" * 40)  # a fake key; nothing leaves the machine:
    clean_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert wandb_mode() == "online"  # what the set-up asks for
    assert "does not answer" in (wandb_server_problem() or "")
    start = time.monotonic()
    logger = wandb_logger(save_dir=str(tmp_path / "run"), project="segexp-test")
    run = logger.experiment
    elapsed = time.monotonic() - start
    try:
        assert run.settings.mode == "offline"
    finally:
        finish_wandb()
    assert elapsed < 10, elapsed
    warnings = [r.getMessage() for r in caplog.records if "logging offline" in r.getMessage()]
    assert len(warnings) == 1 and "wandb sync" in warnings[0], warnings
    assert len(offline_runs(tmp_path / "run")) == 1
