"""End to end: compose the real config, train a tiny model, evaluate its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segexp.run.lifecycle import train
from tests.conftest import TINY, assert_means_of_classes, run_script


@pytest.mark.slow
def test_tiny_train_writes_run_folder(compose_cfg):
    cfg = compose_cfg()
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    written = json.loads((run / "metrics.json").read_text())
    for key in ("val/mIoU", "test/mIoU", "test/pixel_acc", "test/iou/circle", "train/loss_epoch"):
        assert key in written, key
    assert written["test/mIoU"] == pytest.approx(metrics["test/mIoU"])
    assert_means_of_classes(written, "test")
    info = json.loads((run / "run_info.json").read_text())
    assert info["packages"]["torch"] and "command" in info
    assert (run / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path):
    """The commands of the README, in fresh processes: train.py, then evaluate.py on its checkpoint."""
    run = tmp_path / "run"
    data = tmp_path / "data"
    result = run_script("train.py", *TINY, f"paths.data_dir={data}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert "run folder:" in result.stdout

    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        "split=val",
        f"paths.data_dir={data}",  # the generated data is found (or drawn) under paths.data_dir
        f"hydra.run.dir={out}",
        "trainer.accelerator=cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert "val/mIoU" in evaluated and "val/iou/background" in evaluated
    assert "val/mIoU" in result.stdout and "background" in result.stdout
    # Same weights (last == best after one epoch), same split: the same number.
    assert evaluated["val/mIoU"] == pytest.approx(trained["val/mIoU"], abs=1e-6)


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_script(
        "evaluate.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert "missing.ckpt does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_groups_without_importing_torch():
    result = run_script("-X", "importtime", "train.py", "--help")
    assert result.returncode == 0
    assert "model: " in result.stdout and "loss: " in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "pytorch_lightning" not in imported


def test_help_speed_up_gives_hydras_own_answers(monkeypatch):
    """segexp.cli.help memoises Hydra's group-option lookups for --help: the same answers
    as Hydra's own (its defaults included: configs only unless groups are asked for)."""
    from hydra import initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    from segexp.cli.help import speed_up_help
    from tests.conftest import CONF

    original = ConfigLoaderImpl.get_group_options
    monkeypatch.setattr(ConfigLoaderImpl, "get_group_options", original)  # restored after
    assert not speed_up_help(["train.py", "model=fpn"])  # not a help call: untouched
    assert ConfigLoaderImpl.get_group_options is original
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        questions = [
            ("model",),
            ("hydra/sweeper",),
            ("hydra",),
            ("hydra", ObjectType.GROUP),
        ]
        expected = [original(loader, *q) for q in questions]
        assert speed_up_help(["train.py", "--help"])
        assert ConfigLoaderImpl.get_group_options is not original
        for _ in range(2):  # asked again: the remembered answer, still equal
            answers = [ConfigLoaderImpl.get_group_options(loader, *q) for q in questions]
            assert answers == expected
    assert "unet_small" in answers[0] and "segexp_optuna" in answers[1]
    assert "sweeper" in answers[3] and "sweeper" not in answers[2]  # the default filter kept


def test_run_files_are_written_whole_with_the_usual_mode(tmp_path):
    """metrics.json & co. go through a temporary file (atomic), which mkstemp makes 0600;
    the result must have the mode of any file this process creates, so others can read it."""
    import os

    from segexp.run.rundir import write_json

    path = write_json(tmp_path / "metrics.json", {"val/mIoU": 0.5, "nan": float("nan")})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert json.loads(path.read_text()) == {"nan": None, "val/mIoU": 0.5}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_resume_from_the_final_checkpoint_still_writes_val_metrics(compose_cfg):
    """A job stopped at the end of its last epoch (a SLURM requeue there) resumes into a fit
    with nothing left to train: metrics.json still holds the final weights' val/ figures."""
    cfg = compose_cfg()
    first = train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / "metrics.json").unlink()  # as when the stop came before metrics.json was written
    resumed_cfg = compose_cfg([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    resumed = train(resumed_cfg)
    written = json.loads((run / "metrics.json").read_text())
    assert written["val/mIoU"] == pytest.approx(first["val/mIoU"], abs=1e-6)
    assert written["val/iou/circle"] == pytest.approx(first["val/iou/circle"], abs=1e-6)
    assert written["test/mIoU"] == pytest.approx(first["test/mIoU"], abs=1e-6)
    assert resumed["val/mIoU"] == pytest.approx(first["val/mIoU"], abs=1e-6)
