"""An MLflow run that belongs to its run folder: the id is kept in ``mlflow_id.txt``.

``resume=<run folder>`` runs in the same folder, so the logger finds the id there and
continues the same MLflow run; ``reproduce=`` starts in a new folder, hence a new run.
Built by ``segexp.track.loggers.mlflow_logger`` (``logger=mlflow``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from segexp.run.ranks import is_global_zero
from segexp.run.rundir import write_text

log = logging.getLogger(__name__)

MLFLOW_ID_FILE = "mlflow_id.txt"


def read_mlflow_id(run_dir: str | os.PathLike) -> str | None:
    """The MLflow run id a run folder logged to, or None."""
    try:
        text = (Path(run_dir) / MLFLOW_ID_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return text or None


def write_mlflow_id(run_dir: str | os.PathLike, run_id: str) -> None:
    if is_global_zero():
        write_text(Path(run_dir) / MLFLOW_ID_FILE, run_id + "\n")


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` that continues the MLflow run of ``run_dir`` if it has one.

    The id comes from ``run_id``, else ``<run_dir>/mlflow_id.txt``; a new run's id is
    written there as soon as the run exists. Parameters already logged to a continued run
    are not logged again (MLflow refuses a changed value: a resume sets ``ckpt_path``).
    """

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None, **kwargs: Any):
        self.run_dir = Path(run_dir)
        super().__init__(run_id=run_id or read_mlflow_id(self.run_dir), **kwargs)
        self._id_saved = False

    @property
    @rank_zero_experiment
    def experiment(self):
        if not self._initialized and self._run_id is not None:
            from mlflow.exceptions import MlflowException

            try:
                self._mlflow_client.get_run(self._run_id)
            except MlflowException as error:
                log.warning(
                    "MLflow run %s (%s) is not in %s (%s); starting a new run",
                    self._run_id,
                    self.run_dir / MLFLOW_ID_FILE,
                    self._tracking_uri,
                    str(error).splitlines()[0],
                )
                self._run_id = None
        client = MLFlowLogger.experiment.fget(self)
        if not self._id_saved:
            write_mlflow_id(self.run_dir, self._run_id)
            self._id_saved = True
        return client

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Any) -> None:
        from lightning_fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        fresh = {key: value for key, value in flat.items() if key not in logged}
        changed = sorted(k for k in flat if k in logged and logged[k] != str(flat[k])[:250])
        if changed:
            log.info("MLflow run %s keeps its first value of: %s", self.run_id, ", ".join(changed))
        if fresh:
            super().log_hyperparams(fresh)
