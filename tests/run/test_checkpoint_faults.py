"""Checkpoints that survive kills: atomic durable saves, resume fallback, SIGKILL at random
moments (segexp/run/ckpt_io.py).

The SIGKILL test kills a small run ``SEGEXP_KILLS`` times (default 3; ``make stress``
sets 30), each followed by ``train.py resume=<run>``, with ``$TMPDIR`` on another
filesystem than the run folder when ``/dev/shm`` allows it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segexp.run.ckpt_io import (
    DurableCheckpointIO,
    choose_resume_checkpoint,
    save_atomic,
    sweep_partial,
)
from tests import forkrun
from tests.conftest import TINY, run_script, start_script, stop_started
from tests.run.test_signals import signal_at

KILLS = int(os.environ.get("SEGEXP_KILLS", "3"))
# Two steps an epoch, four epochs: a kill can land mid-epoch, in validation or in a save.
SMALL = [*TINY, "data.generate.num_train=8", "trainer.max_epochs=4"]


def temp_files(*folders: Path) -> list[Path]:
    """Hidden files other than .hydra/ (temporary files of an interrupted write)."""
    found = []
    for folder in folders:
        for path in folder.rglob(".*"):
            if ".hydra" not in path.relative_to(folder).parts:
                found.append(path)
    return found


def test_save_atomic_replaces_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    save_atomic({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum() == 2
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(Exception, match="pickle|Can't"):
        save_atomic({"state_dict": {}, "bad": lambda: None}, path)  # fails mid-write
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum() == 2  # old one intact
    assert temp_files(tmp_path) == []


def test_sweep_removes_only_our_temporary_files(tmp_path):
    ours = tmp_path / ".last.ckpt.0123abcd.partial"
    others = [tmp_path / ".keep", tmp_path / "last.ckpt", tmp_path / "x.partial"]
    for path in [ours, *others]:
        path.write_bytes(b"x")
    assert sweep_partial([tmp_path, tmp_path / "missing"]) == [ours]
    assert all(path.exists() for path in others)


def test_trainer_config_uses_durable_io(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    trainer = instantiate(compose_cfg().trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy.checkpoint_io, DurableCheckpointIO)
    stale = tmp_path / ".last.ckpt.0123abcd.partial"
    stale.write_bytes(b"half a checkpoint")
    trainer.strategy.checkpoint_io.save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").is_file() and not stale.exists()  # swept on first save


def fake_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": step // 2, "global_step": step}, path)
    return path


def test_resume_picks_the_newest_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    folder = run / "checkpoints"
    assert choose_resume_checkpoint(run).path is None
    best = fake_checkpoint(folder / "best-epoch001.ckpt", 4)
    last = fake_checkpoint(folder / "last.ckpt", 6)
    hpc = fake_checkpoint(run / "hpc_ckpt_1.ckpt", 5)
    assert choose_resume_checkpoint(run).path == last
    last.write_bytes(last.read_bytes()[:64])  # truncated, as a copy killed mid-way leaves it
    choice = choose_resume_checkpoint(run)
    assert choice.path == hpc and choice.skipped[0][0] == last
    assert "skipped last.ckpt: does not load" in choice.describe()
    hpc.unlink()
    assert choose_resume_checkpoint(run).path == best


def test_resume_message_when_no_checkpoint_loads(compose_cfg, tmp_path):
    from omegaconf import open_dict

    from segexp.run.reproduce import ReproduceError, prepare_config

    run = tmp_path / "killed"
    (run / "checkpoints").mkdir(parents=True)
    cfg = compose_cfg()
    with open_dict(cfg):
        cfg.resume = str(run)
    with pytest.raises(ReproduceError, match="stopped before its first checkpoint"):
        prepare_config(cfg)
    (run / "checkpoints" / "best-epoch000.ckpt").write_bytes(b"truncated")
    with pytest.raises(ReproduceError) as error:
        prepare_config(cfg)
    assert "best-epoch000.ckpt: does not load" in str(error.value)
    assert "stopped before its first checkpoint" not in str(error.value)


@pytest.mark.slow
def test_cli_resume_falls_back_to_best_and_drops_untracked_files(tmp_path, data_dir):
    """last.ckpt truncated, a temp file and an untracked best file left by a kill: resume
    says it continues from best-*.ckpt, finishes, and leaves only the tracked files."""
    run = tmp_path / "run"
    base = [*SMALL, "trainer.max_epochs=2", f"paths.data_dir={data_dir}"]
    result = run_script("train.py", *base, f"hydra.run.dir={run}", *signal_at(15, 1, 0))
    assert result.returncode == 143, result.stderr[-3000:]
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    saved = run / ".hydra" / "config.yaml"  # the resume must not signal itself again
    config = OmegaConf.load(saved)
    del config.callbacks["send_signal"]
    OmegaConf.save(config, saved)
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])
    (folder / ".last.ckpt.0123abcd.partial").write_bytes(b"half")
    stale = folder / "best-epoch007.ckpt"
    shutil.copy(folder / "best-epoch000.ckpt", stale)
    os.utime(stale, (1, 1))  # older than best-epoch000.ckpt: not the one resumed from

    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {folder / 'best-epoch000.ckpt'}" in result.stderr
    assert "skipped last.ckpt: does not load" in result.stderr
    assert "removed" in result.stderr and "best-epoch007.ckpt" in result.stderr
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and names[0].startswith("best-epoch00")
    assert (run / "metrics.json").is_file() and temp_files(run) == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known gap: a run stopped at the end of its last epoch and resumed tests an older "
    "best checkpoint (the epoch's best-*.ckpt was never written) and logs no train/ figures",
)
def test_resume_at_the_end_of_training_equals_the_original(tmp_path, data_dir):
    """SIGTERM during the last batch of the last epoch: the run stops after that epoch
    (validated), and its resume has no step left to train; metrics.json must still equal the
    uninterrupted run's."""
    base = [*SMALL, "trainer.max_epochs=2", f"paths.data_dir={data_dir}"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    result = run_script("train.py", *base, f"hydra.run.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("train.py", *base, f"hydra.run.dir={run}", *signal_at(15, 1, 1))
    assert result.returncode == 143 and "at the end of an epoch" in result.stderr
    saved = run / ".hydra" / "config.yaml"  # the resume must not signal itself again
    config = OmegaConf.load(saved)
    del config.callbacks["send_signal"]
    OmegaConf.save(config, saved)
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((reference / "metrics.json").read_text())
    assert json.loads((run / "metrics.json").read_text()) == expected


def other_filesystem_tmpdir(run_root: Path) -> Path:
    """A fresh $TMPDIR, on another filesystem than ``run_root`` when /dev/shm is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != run_root.stat().st_dev:
        return Path(tempfile.mkdtemp(prefix="segexp-faults-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="segexp-faults-"))


def start(args: list[str], tmpdir: Path, log: Path) -> subprocess.Popen | forkrun.Forked:
    """``train.py args`` with ``$TMPDIR`` set; stdout and stderr go to ``log`` (a pipe nobody
    reads while waiting for the kill could fill and stall the run)."""
    return start_script("train.py", *args, output=log, env={**os.environ, "TMPDIR": str(tmpdir)})


EPOCHS = 4  # SMALL's: the last checkpoint a run writes is epoch 3's


def saved_epoch(path: Path) -> int | None:
    """The epoch field of a checkpoint file, or None while it is missing or being replaced."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


def watch_saves(process: subprocess.Popen | forkrun.Forked, last: Path) -> dict[int, float]:
    """When each epoch's checkpoint appeared at ``last``, while ``process`` runs."""
    seen: dict[int, float] = {}
    stamp = None
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        now = last.stat().st_mtime_ns if last.exists() else None
        if now != stamp:
            epoch = saved_epoch(last)
            if epoch is not None:  # else it is being replaced: look again
                stamp = now
                seen.setdefault(epoch, time.monotonic())
        time.sleep(0.005)
    return seen


def kill_at_random_moment(
    process: subprocess.Popen | forkrun.Forked, run: Path, rng: random.Random, epoch_s: float
) -> bool:
    """SIGKILL ``process`` while it trains: half the time in the middle of a checkpoint save
    (its temporary file exists), else a random time (up to half an epoch, ``epoch_s``) after
    it finished saving a checkpoint of an epoch before the last. False if the run got past
    its last epoch's checkpoint (or ended) first: then nothing is killed."""
    last = run / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.exists() else None
    mid_save = rng.random() < 0.5
    delay = rng.uniform(0.0, 0.5 * epoch_s)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if mid_save and any(last.parent.glob(".*.partial")):
            break
        saved = last.stat().st_mtime_ns if last.exists() else None
        if not mid_save and saved != before and not any(last.parent.glob(".*.partial")):
            epoch = saved_epoch(last)
            if epoch is not None and epoch >= EPOCHS - 1:
                return False  # training is over: the rest is the test and metrics.json
            if epoch is not None:
                time.sleep(delay)
                if (saved_epoch(last) or 0) >= EPOCHS - 1:
                    return False  # it finished its last epoch meanwhile
                break
        time.sleep(0.002)
    if process.poll() is not None:
        return False
    process.kill()
    process.wait()
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, data_dir):
    base = [*SMALL, f"paths.data_dir={data_dir}"]
    tmpdir = other_filesystem_tmpdir(tmp_path)
    process = None
    try:
        reference = tmp_path / "reference"
        logs = tmp_path / "logs"
        logs.mkdir()
        process = start([*base, f"hydra.run.dir={reference}"], tmpdir, logs / "reference.log")
        saves = watch_saves(process, reference / "checkpoints" / "last.ckpt")
        assert process.wait(timeout=600) == 0, (logs / "reference.log").read_text()[-3000:]
        expected = json.loads((reference / "metrics.json").read_text())
        # The time from one epoch's checkpoint to the next, as the reference run took it. Any
        # span that holds the run's start-up (imports, building, the sanity check) made epochs
        # look longer, and twice a delay drawn from it outlasted the remaining epochs, so nothing
        # was killed.
        assert sorted(saves) == list(range(EPOCHS)), saves
        epoch_s = (saves[EPOCHS - 1] - saves[0]) / (EPOCHS - 1)

        run = tmp_path / "killed"
        rng = random.Random(int(os.environ.get("SEGEXP_KILL_SEED", "0")))
        log = logs / "start.log"
        process = start([*base, f"hydra.run.dir={run}"], tmpdir, log)
        kills = 0
        for _ in range(KILLS):
            if not kill_at_random_moment(process, run, rng, epoch_s):
                break
            kills += 1
            log = logs / f"resume{kills}.log"
            process = start([f"resume={run}"], tmpdir, log)
        process.wait(timeout=600)
        stderr = log.read_text()
        if not (run / "metrics.json").is_file() or process.returncode != 0:
            pytest.fail(f"after {kills} kills the resumed run failed:\n{stderr[-3000:]}")
        # The kills happened (the first run always has epochs left to kill it in): without
        # them this would compare two uninterrupted runs. The run that finished was a resume.
        assert kills >= 1 and log.name != "start.log" and "resuming from" in stderr, kills
        assert json.loads((run / "metrics.json").read_text()) == expected
        assert temp_files(run) == []
        # wandb (imported even with logger=csv) makes its own temp dirs, which a SIGKILL leaves.
        assert [p for p in tmpdir.iterdir() if "wandb-" not in p.name] == []
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert len(names) == 2 and names[0].startswith("best-") and names[1] == "last.ckpt"
        print(f"{kills} SIGKILLs while training, then resumed to the uninterrupted run's metrics")
    finally:
        if process is not None:  # a failed check may have left it running
            stop_started(process)
        shutil.rmtree(tmpdir, ignore_errors=True)
