"""Kill signals: save last.ckpt, exit non-zero, requeue under SLURM (segexp.run.signals)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segexp.run.lifecycle import train
from segexp.run.signals import Interrupted, SignalCheckpoint

# 12 training images in batches of 4: three steps an epoch, so a signal can land mid-epoch.
THREE_STEPS = ["data.generate.num_train=12", "test=false"]


class SendSignal(pl.Callback):
    """Test helper: the process signals itself after training batch ``batch`` of ``epoch``."""

    def __init__(self, signum: int, epoch: int, batch: int) -> None:
        self.signum, self.epoch, self.batch = signum, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def signal_at(signum: int, epoch: int, batch: int) -> list[str]:
    key = "+callbacks.send_signal"
    return [
        f"{key}._target_=tests.run.test_signals.SendSignal",
        f"{key}.signum={int(signum)}",
        f"{key}.epoch={epoch}",
        f"{key}.batch={batch}",
    ]


def ckpt_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "batch", "steps_done"),
    [
        (signal.SIGTERM, 0, 2),  # mid-epoch: stops after the next batch
        (signal.SIGINT, 0, 2),
        (signal.SIGUSR1, 0, 2),
        (signal.SIGTERM, 2, 3),  # in the last batch: stops at the end of the epoch, validated
    ],
)
def test_signal_saves_last_ckpt_and_exits_nonzero(compose_cfg, signum, batch, steps_done):
    previous = signal.getsignal(signum)
    cfg = compose_cfg([*THREE_STEPS, *signal_at(signum, epoch=0, batch=batch)])
    with pytest.raises(Interrupted) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signum  # 143 for SIGTERM: SLURM/CI see a failure
    assert "resume=" in str(stopped.value)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = ckpt_state(last)
    assert checkpoint["global_step"] == steps_done and checkpoint["epoch"] == 0
    position = checkpoint["SegDataModule"]  # the DataModule's own state: where the epoch stopped
    assert position["batches_done"] == steps_done and position["epoch_done"] == (steps_done == 3)
    assert not (last.parent / "last-v1.ckpt").exists()
    assert signal.getsignal(signum) == previous  # handlers restored
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()  # no "successful" result


def test_signal_checkpoint_records_each_signal_and_restores_the_handlers():
    """At train start the guard takes over SIGTERM, SIGINT and SIGUSR1: each one delivered is
    recorded (the process goes on to the next safe point), a second Ctrl+C interrupts at once,
    and the handlers found at the start come back afterwards."""
    names = ("SIGTERM", "SIGUSR1", "SIGINT")
    before = {name: signal.getsignal(getattr(signal, name)) for name in names}
    guard = SignalCheckpoint("unused")
    guard.on_train_start(None, None)
    try:
        for name in names:
            os.kill(os.getpid(), getattr(signal, name))
            assert guard.received == getattr(signal, name), name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C a second time
    finally:
        guard.on_exception(None, None, KeyboardInterrupt())
    assert {name: signal.getsignal(getattr(signal, name)) for name in names} == before


def fake_slurm_job(tmp_path: Path, monkeypatch, requeue_works: bool) -> Path:
    """This process as task 0 of SLURM job 4242, with an ``scontrol`` that records its
    arguments and, like slurmctld on a requeue, SIGTERMs the job's task (its caller), or
    fails. Returns the file of recorded calls."""
    calls = tmp_path / "scontrol.calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    answer = "kill -TERM $PPID\n" if requeue_works else "echo 'requeue refused' >&2\nexit 1\n"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{answer}')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "segexp",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls


def usr1_in_slurm_job(compose_cfg):
    """Train three steps with SIGUSR1 at the first batch, in the job fake_slurm_job set up.

    Returns (cfg, the Interrupted it stopped with, SIGTERM's handler as training left it,
    SIGTERM's handler before training); SIGTERM's handler is put back afterwards, since this
    test process goes on, unlike a job."""
    before = signal.getsignal(signal.SIGTERM)
    cfg = compose_cfg([*THREE_STEPS, *signal_at(signal.SIGUSR1, epoch=0, batch=0)])
    try:
        with pytest.raises(Interrupted) as stopped:
            train(cfg)
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    return cfg, stopped, after, before


@pytest.mark.slow
def test_slurm_requeue_ignores_the_sigterm_that_comes_with_it(
    compose_cfg, tmp_path, monkeypatch, capfd
):
    """SIGUSR1 in a SLURM job: save, `scontrol requeue`, exit 138. SLURM answers the requeue
    with SIGTERM to the job's tasks; this process is already stopping, so that SIGTERM is no
    second stop (before, it was announced as one, and Lightning's handler, restored on the
    way out, failed its collective under DDP and marked the sweep job failed)."""
    calls = fake_slurm_job(tmp_path, monkeypatch, requeue_works=True)
    cfg, stopped, ignored, _ = usr1_in_slurm_job(compose_cfg)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "Requeued SLURM job 4242" in str(stopped.value)
    assert ignored == signal.SIG_IGN  # the process exits next, with the requeue's SIGTERM ignored
    err = capfd.readouterr().err
    assert "received SIGUSR1" in err and "received SIGTERM" not in err, err[-2000:]
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt_state(last)["global_step"] == 2


@pytest.mark.slow
def test_failed_slurm_requeue_gives_sigterm_back_and_says_how_to_resume(
    compose_cfg, tmp_path, monkeypatch
):
    """When `scontrol requeue` fails no SIGTERM comes from it: SIGTERM's handler is what it
    was before training, and the message gives the resume command instead."""
    calls = fake_slurm_job(tmp_path, monkeypatch, requeue_works=False)
    _, stopped, after, before = usr1_in_slurm_job(compose_cfg)
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "resume=" in str(stopped.value) and "Requeued" not in str(stopped.value)
    assert after == before
