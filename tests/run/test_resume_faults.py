"""resume= never dies after training and ends like an uninterrupted run (issue 29)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_script
from tests.run.test_reproduce import train_until_sigterm

BASE = [*TINY, "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("original")
    base = [*BASE, f"paths.data_dir={tmp / 'data'}"]
    result = run_script("train.py", *base, f"hydra.run.dir={tmp / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return base, tmp / "run"


@pytest.mark.slow
def test_resume_after_the_last_step_has_the_same_metric_keys(original, tmp_path):
    """Killed after the last training step (SIGTERM at the last batch), the resumed run
    trains nothing more; its metrics.json still has every key of an uninterrupted run."""
    base, run = original
    killed = tmp_path / "killed"
    result = train_until_sigterm(base, killed, epoch=1, batch=1)  # 8 images / 4: batches 0, 1
    assert result.returncode == 143, result.stderr[-3000:]
    result = run_script("train.py", f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((run / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert sorted(resumed) == sorted(expected)


@pytest.mark.slow
def test_resume_without_its_best_checkpoint_tests_with_last(original, tmp_path):
    """Issue 29: resume= of a run whose best-*.ckpt is gone trained on, then died in the
    test stage with a FileNotFoundError and no metrics.json."""
    base, run = original
    killed = tmp_path / "killed"
    result = train_until_sigterm(base, killed, epoch=1, batch=0)
    assert result.returncode == 143, result.stderr[-3000:]
    best = sorted((killed / "checkpoints").glob("best-*.ckpt"))
    assert best, sorted((killed / "checkpoints").iterdir())
    for path in best:
        path.unlink()
    result = run_script("train.py", f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resume: the best checkpoint {best[0]} is gone; training goes on" in result.stderr
    metrics = json.loads((killed / "metrics.json").read_text())
    assert "test/mIoU" in metrics
