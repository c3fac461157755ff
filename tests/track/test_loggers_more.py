"""logger=tensorboard and logger=mlflow: each composes with the others, and a run is read
back with the tool's own reader (TensorBoard's EventAccumulator, mlflow.search_runs), offline;
resume= continues the same TensorBoard log dir and the same MLflow run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from segexp.errors import UserError
from segexp.track.loggers import default_mlflow_uri, mlflow_logger, tensorboard_logger
from segexp.track.mlflow_run import MLFLOW_ID_FILE, read_mlflow_id
from tests.conftest import TINY, run_script

needs_tools = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("mlflow") is None,
    reason="tensorboard and mlflow are not installed (pip install -e '.[tensorboard,mlflow]')",
)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("logger=tensorboard", {"tensorboard", "csv"}),
        ("logger=mlflow", {"mlflow", "csv"}),
        ("logger=[wandb,tensorboard]", {"wandb", "tensorboard", "csv"}),
        ("logger=[csv,mlflow]", {"mlflow", "csv"}),
        ("logger=many", {"wandb", "tensorboard", "mlflow", "csv"}),
    ],
)
def test_loggers_compose(compose_cfg, choice: str, expected: set[str]) -> None:
    cfg = compose_cfg([choice])
    assert set(cfg.logger) == expected
    if "mlflow" in expected:
        assert cfg.logger.mlflow.save_dir == cfg.paths.output_dir  # where mlflow_id.txt goes


def test_default_mlflow_store_is_under_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_mlflow_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.invalid:5000")
    assert default_mlflow_uri() == "http://tracking.invalid:5000"


def test_missing_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "mlflow") else real(name, *a),
    )
    with pytest.raises(UserError, match=r"pip install -e '\.\[tensorboard\]'"):
        tensorboard_logger(str(tmp_path))
    with pytest.raises(UserError, match=r"logger=mlflow needs the mlflow package"):
        mlflow_logger(str(tmp_path))


@needs_tools
def test_mlflow_run_id_kept_in_the_run_folder(tmp_path: Path) -> None:
    """A new run writes its id to mlflow_id.txt; a logger in the same folder continues it;
    an id the store does not know starts a new run instead of failing."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    first = mlflow_logger(str(tmp_path / "run"), tracking_uri=uri)
    first.log_hyperparams({"optimizer": {"lr": 0.1}, "ckpt_path": None})
    run_id = first.run_id
    assert read_mlflow_id(tmp_path / "run") == run_id
    again = mlflow_logger(str(tmp_path / "run"), tracking_uri=uri)
    again.log_hyperparams({"optimizer": {"lr": 0.1}, "ckpt_path": "last.ckpt", "new": 1})
    assert again.run_id == run_id
    params = again.experiment.get_run(run_id).data.params
    assert params == {"optimizer/lr": "0.1", "ckpt_path": "None", "new": "1"}  # first value kept
    (tmp_path / "run" / MLFLOW_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    fresh = mlflow_logger(str(tmp_path / "run"), tracking_uri=uri)
    assert fresh.run_id not in (run_id, "0123456789abcdef0123456789abcdef")
    assert read_mlflow_id(tmp_path / "run") == fresh.run_id


def read_tensorboard(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def hparams_of(events) -> tuple[set[str], set[str]]:
    """(hyper-parameter names, metric names) of the HPARAMS table TensorBoard shows."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/experiment").plugin_data.content
    )
    return (
        {info.name for info in data.experiment.hparam_infos},
        {info.name.tag for info in data.experiment.metric_infos},
    )


def read_mlflow(uri: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["segexp"], output_format="list")


@needs_tools
@pytest.mark.slow
def test_tensorboard_and_mlflow_read_back_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = [
        *(o for o in TINY if not o.startswith("logger=")),
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={uri}",
        "trainer.max_epochs=2",
        "callbacks.image_logger.every_n_epochs=1",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    result = run_script("train.py", *args, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]

    # TensorBoard: scalars, the example grid every epoch, the HPARAMS table.
    events = read_tensorboard(run / "tensorboard")
    tags = events.Tags()
    assert {"val/mIoU", "test/mIoU", "train/loss_epoch"} <= set(tags["scalars"])
    assert len(events.Scalars("val/mIoU")) == 2
    assert "val/examples" in tags["images"]
    assert [image.step for image in events.Images("val/examples")] == [2, 4]  # after each epoch
    params, metrics = hparams_of(events)
    assert {"optimizer/lr", "model/_target_", "seed"} <= params
    assert {"val/mIoU", "test/mIoU"} <= metrics

    # MLflow: one run, its id in the run folder, metrics, params and the pictures.
    (logged,) = read_mlflow(uri)
    run_id = logged.info.run_id
    assert read_mlflow_id(run) == run_id
    assert {"val/mIoU", "test/mIoU", "train/loss_epoch"} <= set(logged.data.metrics)
    assert {"optimizer/lr", "seed"} <= set(logged.data.params)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    examples = [a.path for a in client.list_artifacts(run_id, "val/examples")]
    assert examples == ["val/examples/epoch_000.png", "val/examples/epoch_001.png"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "val", "test"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "test")} == {
        "test/confusion.csv",
        "test/confusion.png",
    }

    # A killed run (no metrics.json) resumed: the same MLflow run, the same TensorBoard dir.
    (run / "metrics.json").unlink()
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "metrics.json").is_file()
    (logged_again,) = read_mlflow(uri)
    assert logged_again.info.run_id == run_id == read_mlflow_id(run)
    assert len(client.get_metric_history(run_id, "test/mIoU")) == 2  # the resumed test too
    assert [p.name for p in run.iterdir() if p.name.startswith("tensorboard")] == ["tensorboard"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    assert len(read_tensorboard(run / "tensorboard").Scalars("test/mIoU")) == 2
