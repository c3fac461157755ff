"""Disk faults are one line and exit 2 (issue 29): a full disk names the folder and what is
left intact; a run folder that cannot be written, and resume= of one, name the folder."""

from __future__ import annotations

import errno
import os

import pytest

from segexp.cli import errors
from segexp.cli.argv import rewrite_argv
from segexp.run.reproduce import ReproduceError
from tests.conftest import run_script


@pytest.mark.parametrize("has_last", [True, False])
def test_full_disk_names_the_folder_and_what_is_intact(tmp_path, monkeypatch, capsys, has_last):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    if has_last:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    monkeypatch.setattr(errors, "_run_dir", lambda: run)
    with pytest.raises(SystemExit) as stop, errors.exit_codes():
        try:  # what torch.save raises on a full disk: ENOSPC only in the chain
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as cause:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] unexpected pos"
            ) from cause
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: no space left on the device of {run}")
    if has_last:
        assert f"{run / 'checkpoints' / 'last.ckpt'} is intact" in err
        assert f"resume={run}" in err
    else:
        assert "No checkpoint was complete yet" in err


def test_resume_of_a_read_only_run_names_the_folder(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "checkpoints").mkdir()
    real_access = os.access
    monkeypatch.setattr(  # root writes through permission bits: mount-like read-only here
        os, "access", lambda path, mode: False if str(path) == str(run) else real_access(path, mode)
    )
    with pytest.raises(ReproduceError, match=rf"resume={run}: {run} cannot be written"):
        rewrite_argv(["train.py", f"resume={run}"])


def test_run_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder's parent should be\n")
    result = run_script("train.py", f"hydra.run.dir={blocker / 'run'}", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"error: the run folder {blocker} (where {blocker / 'run'} would be created)" in (
        result.stderr
    )
