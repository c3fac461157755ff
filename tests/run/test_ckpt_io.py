"""segexp.run.ckpt_io without a training run: which checkpoint a resume picks and what it says,
durable saves of local and remote paths, and RunCheckpoint's clean-up on fake trainers.
(Kills of real runs: test_checkpoint_faults.py.)"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

import segexp.run.ckpt_io as ckpt_io
from segexp.run.ckpt_io import (
    DurableCheckpointIO,
    RunCheckpoint,
    choose_resume_checkpoint,
    resume_candidates,
    save_atomic,
    sweep_partial,
    use_durable_io,
)

STALE = ".last.ckpt.0123abcd.partial"  # a temporary file a killed save left


def checkpoint(path: Path, epoch: int | None, step: int | None, mtime: float = 1e9) -> Path:
    """A training checkpoint (a real tensor in its state_dict) with a given file time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {"w": torch.arange(3.0)}}
    state.update({k: v for k, v in (("epoch", epoch), ("global_step", step)) if v is not None})
    torch.save(state, path)
    os.utime(path, (mtime, mtime))
    return path


def test_candidates_in_order_of_preference(tmp_path):
    """last, then best-* by name, then hpc_ckpt_<n> newest n first (as numbers, not text),
    names without a number after them."""
    folder = tmp_path / "checkpoints"
    names = ["hpc_ckpt_2", "hpc_ckpt_x", "hpc_ckpt_10", "hpc_ckpt_0"]
    for path in [folder / "best-b.ckpt", folder / "best-a.ckpt", folder / "last.ckpt"]:
        checkpoint(path, 0, 0)
    for name in names:
        checkpoint(tmp_path / f"{name}.ckpt", 0, 0)
    expected = ["last", "best-a", "best-b", "hpc_ckpt_10", "hpc_ckpt_2", "hpc_ckpt_0", "hpc_ckpt_x"]
    assert [p.stem for p in resume_candidates(tmp_path)] == expected


def test_the_choice_and_what_it_says(tmp_path):
    run, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    last = checkpoint(folder / "last.ckpt", 3, 8)
    best = checkpoint(folder / "best-epoch002.ckpt", 2, 6)
    (folder / STALE).write_bytes(b"half")
    (run / STALE).write_bytes(b"half")
    choice = choose_resume_checkpoint(run)
    assert (choice.path, choice.epoch, choice.step, choice.skipped) == (last, 3, 8, [])
    assert choice.describe() == f"resuming from {last} (epoch 3, step 8)"
    assert not (folder / STALE).exists() and not (run / STALE).exists()  # swept first

    last.write_bytes(last.read_bytes()[:100])  # truncated by a kill
    torch.save({"weights": {}}, folder / "best-foreign.ckpt")  # not a training checkpoint
    torch.save({"state_dict": {}, "x": argparse.Namespace()}, folder / "best-unsafe.ckpt")
    choice = choose_resume_checkpoint(run)
    assert (choice.path, choice.epoch, choice.step) == (best, 2, 6)
    reasons = dict(choice.skipped)
    assert re.fullmatch(r"does not load \(\w+: .+\)", reasons[last]), reasons[last]
    assert reasons[folder / "best-foreign.ckpt"] == "not a training checkpoint (no state_dict)"
    # Only tensors and plain containers load (weights_only): a pickled object is refused.
    assert reasons[folder / "best-unsafe.ckpt"].startswith("does not load (UnpicklingError: ")
    skipped = "; ".join(f"{p.name}: {why}" for p, why in choice.skipped)
    assert choice.describe() == f"resuming from {best} (epoch 2, step 6); skipped {skipped}"


def test_ties_go_to_the_newer_file_then_the_preferred_one(tmp_path):
    older = checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 4, 9, mtime=1e9)
    newer = checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 4, 9, mtime=2e9)
    assert choose_resume_checkpoint(tmp_path).path == newer  # same step: the newer file
    os.utime(older, (2e9, 2e9))
    assert choose_resume_checkpoint(tmp_path).path == newer  # same time: hpc_ckpt_2 first
    bare = checkpoint(tmp_path / "checkpoints" / "last.ckpt", None, None)  # no counters: 0, 0
    assert choose_resume_checkpoint(tmp_path).path == newer
    bare.unlink()
    bare = checkpoint(tmp_path / "checkpoints" / "last.ckpt", None, 9, mtime=2e9)
    choice = choose_resume_checkpoint(tmp_path)
    assert (choice.path, choice.epoch, choice.step) == (bare, 0, 9)  # full tie: last first


def test_save_atomic_writes_a_normal_file_in_new_folders(tmp_path):
    path = save_atomic({"state_dict": {"w": torch.ones(2)}}, tmp_path / "a" / "b" / "x.ckpt")
    assert torch.load(path, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0]
    umask = os.umask(0)
    os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)  # like any new file


def test_a_save_that_cannot_start_raises_its_own_error(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io, "open", full_disk, raising=False)
    with pytest.raises(OSError, match="No space left"):  # not a FileNotFoundError of the clean-up
        save_atomic({"state_dict": {}}, tmp_path / "x.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_sweep_skips_missing_folders_and_keeps_what_is_not_ours(tmp_path):
    ours = tmp_path / STALE
    kept = [tmp_path / ".notes.partial", tmp_path / ".last.ckpt.zz.partial"]
    for path in [ours, *kept]:
        path.write_bytes(b"x")
    (tmp_path / ".best.ckpt.0123abcd.partial").mkdir()  # a folder, even with our name
    assert sweep_partial([tmp_path / "missing", tmp_path]) == [ours]
    assert (
        all(path.exists() for path in kept) and (tmp_path / ".best.ckpt.0123abcd.partial").is_dir()
    )


def test_durable_io_saves_local_and_file_urls_atomically_and_remote_ones_via_lightning(tmp_path):
    io = DurableCheckpointIO()
    state = {"state_dict": {"w": torch.arange(4.0)}}
    (tmp_path / STALE).write_bytes(b"half")
    io.save_checkpoint(state, f"file://{tmp_path}/a.ckpt")
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]["w"].sum() == 6
    assert not (tmp_path / STALE).exists()  # the folder is swept at its first save ...
    (tmp_path / STALE).write_bytes(b"half")
    io.save_checkpoint(state, tmp_path / "b.ckpt")
    assert (tmp_path / STALE).exists()  # ... only then: later files may be another save's
    with pytest.raises(TypeError, match="storage_options"):  # as Lightning's own save does
        io.save_checkpoint(state, tmp_path / "c.ckpt", storage_options={"x": 1})

    import fsspec

    io.save_checkpoint(state, "memory://segexp-test/remote.ckpt")
    with fsspec.open("memory://segexp-test/remote.ckpt", "rb") as handle:
        assert torch.load(handle, weights_only=True)["state_dict"]["w"].sum() == 6
    assert not list(Path.cwd().glob("memory:*"))  # not written as a local folder


def fake_trainer(global_zero: bool = True, ckpt_path=None, after_setup: bool = False):
    return SimpleNamespace(
        is_global_zero=global_zero,
        ckpt_path=ckpt_path,
        strategy=SimpleNamespace(
            checkpoint_io=TorchCheckpointIO(), restore_checkpoint_after_setup=after_setup
        ),
    )


def test_use_durable_io_replaces_only_lightnings_default_and_sweeps_on_rank_zero(tmp_path):
    trainer = fake_trainer()
    (tmp_path / STALE).write_bytes(b"half")
    use_durable_io(trainer, [tmp_path])
    assert type(trainer.strategy.checkpoint_io) is DurableCheckpointIO
    assert not (tmp_path / STALE).exists()

    class Custom(TorchCheckpointIO):
        pass

    other = fake_trainer(global_zero=False)
    other.strategy.checkpoint_io = custom = Custom()
    (tmp_path / STALE).write_bytes(b"half")
    use_durable_io(other, [tmp_path])
    assert other.strategy.checkpoint_io is custom and (tmp_path / STALE).exists()


def best_k_callback(folder: Path, **kwargs) -> RunCheckpoint:
    return RunCheckpoint(
        dirpath=str(folder), filename="best-epoch{epoch:03d}", monitor="val/mIoU", mode="max",
        **kwargs,
    )  # fmt: skip


def test_a_resume_removes_only_the_best_files_the_checkpoint_does_not_track(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    tracked = checkpoint(folder / "best-epoch001.ckpt", 1, 4)
    stray = checkpoint(folder / "best-epoch003.ckpt", 3, 8)  # written just before a kill
    resumed = checkpoint(folder / "last.ckpt", 3, 8)
    other = checkpoint(folder / "best-other.ckpt", 0, 0)  # not our name pattern (best-epoch*)
    callback = best_k_callback(folder)
    callback.best_k_models = {str(tracked): torch.tensor(0.5)}
    callback.best_model_path = str(tracked)

    for trainer in (fake_trainer(ckpt_path=None), fake_trainer(False, str(resumed))):
        callback.on_fit_start(trainer, None)  # no resume, or not rank 0: nothing goes
    plain = RunCheckpoint(dirpath=str(folder), filename="best-epoch{epoch:03d}")  # no monitor
    plain.on_fit_start(fake_trainer(ckpt_path=str(resumed)), None)
    callback.on_fit_start(fake_trainer(ckpt_path=str(resumed), after_setup=True), None)
    assert stray.exists()  # that strategy restores later: train start is the moment

    callback.on_train_start(fake_trainer(ckpt_path=str(resumed), after_setup=True), None)
    assert not stray.exists() and tracked.exists() and resumed.exists() and other.exists()
    assert f"removed {stray}" in capsys.readouterr().err
    stray = checkpoint(folder / "best-epoch005.ckpt", 5, 12)
    callback.on_fit_start(fake_trainer(ckpt_path=str(resumed)), None)
    assert not stray.exists()


def test_a_moved_run_folder_keeps_its_best_k_bookkeeping(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    before = best_k_callback(old)
    before.best_model_path = before.kth_best_model_path = str(old / "best-epoch002.ckpt")
    before.best_model_score = torch.tensor(0.7)
    before.best_k_models = {str(old / "best-epoch002.ckpt"): torch.tensor(0.7)}
    before.last_model_path = str(tmp_path / "elsewhere" / "last.ckpt")  # not in the old folder
    state = before.state_dict()

    after = best_k_callback(new)
    after.load_state_dict(state)
    assert after.best_model_path == after.kth_best_model_path == str(new / "best-epoch002.ckpt")
    assert list(after.best_k_models) == [str(new / "best-epoch002.ckpt")]
    assert after.last_model_path == str(tmp_path / "elsewhere" / "last.ckpt")
    assert float(after.best_model_score) == pytest.approx(0.7)
    same = best_k_callback(old)
    same.load_state_dict(state)  # not moved: Lightning's own restore
    assert same.best_k_models == before.best_k_models


def test_the_best_file_a_run_resumed_from_is_replaced_like_any_other(tmp_path):
    folder = tmp_path / "checkpoints"
    resumed, newer = str(folder / "best-epoch004.ckpt"), str(folder / "best-epoch006.ckpt")
    trainer = fake_trainer(ckpt_path=resumed)
    assert best_k_callback(folder)._should_remove_checkpoint(trainer, resumed, newer)
    # Lightning's own callback keeps it forever; the same file, or one outside the folder, stays.
    assert not ModelCheckpoint(dirpath=str(folder))._should_remove_checkpoint(
        trainer, resumed, newer
    )
    assert not best_k_callback(folder)._should_remove_checkpoint(trainer, resumed, resumed)
    outside = str(tmp_path / "elsewhere" / "best-epoch004.ckpt")
    trainer = fake_trainer(ckpt_path=outside)
    assert not best_k_callback(folder)._should_remove_checkpoint(trainer, outside, newer)


def test_progress_counters_default_to_zero_and_a_load_error_keeps_its_first_line(tmp_path):
    from segexp.run.ckpt_io import checkpoint_progress

    assert checkpoint_progress(checkpoint(tmp_path / "a.ckpt", None, None)) == (0, 0)
    assert checkpoint_progress(checkpoint(tmp_path / "b.ckpt", 0, 0)) == (0, 0)
    assert checkpoint_progress(checkpoint(tmp_path / "c.ckpt", 2, 7)) == (2, 7)
    broken = tmp_path / "d.ckpt"
    broken.write_bytes(checkpoint(tmp_path / "e.ckpt", 1, 1).read_bytes()[:100])
    try:  # what torch itself says about the file
        torch.load(broken, weights_only=True)
    except Exception as error:  # noqa: BLE001 (any error torch raises)
        expected = f"does not load ({type(error).__name__}: {str(error).splitlines()[0]})"
    with pytest.raises(ValueError) as raised:
        checkpoint_progress(broken)
    assert str(raised.value) == expected


def test_on_a_tie_in_steps_the_newer_file_wins_over_the_preferred_one(tmp_path):
    newer = checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 4, 9, mtime=2e9)
    checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 4, 9, mtime=1e9)  # preferred (higher n), older
    assert choose_resume_checkpoint(tmp_path).path == newer


def test_a_resume_says_when_its_best_file_is_gone(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    resumed = str(checkpoint(folder / "last.ckpt", 3, 8))
    callback = best_k_callback(folder)
    callback.best_model_path = str(folder / "best-epoch002.ckpt")  # deleted since
    for trainer in (fake_trainer(ckpt_path=None), fake_trainer(False, resumed)):
        callback.on_fit_start(trainer, None)  # no resume, or not rank 0: nothing said
    checkpoint(folder / "best-epoch002.ckpt", 2, 6)
    callback.on_fit_start(fake_trainer(ckpt_path=resumed), None)  # there: nothing to say
    assert capsys.readouterr() == ("", "")
    (folder / "best-epoch002.ckpt").unlink()
    callback.on_fit_start(fake_trainer(ckpt_path=resumed), None)
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"segexp: resume: the best checkpoint {folder / 'best-epoch002.ckpt'} is gone; "
        "training goes on, and the test stage will use a better epoch's checkpoint if one is "
        "saved, else the final weights (last.ckpt)\n"
    )
    callback.best_model_path = ""
    callback.on_fit_start(fake_trainer(ckpt_path=resumed), None)  # no best yet
    assert capsys.readouterr() == ("", "")


def test_what_a_resume_removes_is_said_on_stderr(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    resumed = str(checkpoint(folder / "last.ckpt", 3, 8))
    stray = checkpoint(folder / "best-epoch003.ckpt", 3, 8)
    best_k_callback(folder)._drop_untracked(fake_trainer(ckpt_path=resumed))
    assert capsys.readouterr() == (
        "",
        f"segexp: removed {stray}: the resumed checkpoint does not track it (left by the "
        "interrupted run)\n",
    )


def test_a_moved_folder_moves_last_and_the_same_file_is_never_removed(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    before = best_k_callback(old)
    before.last_model_path = str(old / "last.ckpt")
    after = best_k_callback(new)
    after.load_state_dict(before.state_dict())
    assert after.last_model_path == str(new / "last.ckpt")
    same = str(new / "best-epoch001.ckpt")
    assert not after._should_remove_checkpoint(fake_trainer(), same, same)  # not resumed
