"""Lightning's CSVLogger, made safe for a run that resumes in its own folder."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """Writes ``<save_dir>/<name>/metrics.csv`` like CSVLogger, but a resumed run (same
    folder) appends to the file instead of deleting it: Lightning's writer removes an
    existing ``metrics.csv`` when it starts, which loses every epoch before the resume."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        earlier = path.read_text() if path.is_file() else ""
        experiment = CSVLogger.experiment.fget(self)  # removes metrics.csv: put it back
        if earlier:
            path.write_text(earlier)
            # The writer appends rows; when new columns appear it rewrites the file with
            # the union of the headers, keeping the earlier rows.
            experiment.metrics_keys = sorted(next(csv.reader(io.StringIO(earlier)), []))
        return experiment
