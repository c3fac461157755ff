"""Sweep jobs: jobs that fail without ending the sweep.

A multirun (grid, Optuna or W&B agent) runs many jobs in one process. One job
that diverges (NaN) or crashes must not take the other jobs down, and each job
must tell the sweeper what it scored in a form the sweeper accepts.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"


def run_job(
    train: Callable[[Any], Mapping[str, float]], cfg: Any, multirun: bool | None = None
) -> float | None:
    """Run ``train(cfg)`` as one sweep job and return ``cfg.optimized_metric``.

    Returns None instead of NaN: the Optuna sweeper turns None into a failed
    trial and goes on, whereas NaN makes optuna 2.x raise inside the sweeper and
    end the whole study. Under multirun, an exception is logged, written to the
    run folder (``error.txt``) and the job returns None, so the other jobs still
    run; in a single run it propagates as usual. The W&B run is always finished,
    so the next job of the sweep starts a run of its own.
    """
    from segexp.run.job import hydra_context
    from segexp.track.loggers import finish_wandb

    if multirun is None:
        context = hydra_context()
        multirun = bool(context and context["multirun"])
    try:
        metrics = train(cfg)
    except Exception:
        finish_wandb(exit_code=1)
        if not multirun:
            raise
        log.exception("job failed; the sweep goes on with the next job")
        run_dir = Path(cfg.paths.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        return None
    finish_wandb(metrics)
    value = metrics.get(cfg.optimized_metric)
    if value is None or not math.isfinite(value):
        log.warning(
            "optimized_metric=%s is %s (known: %s); the sweeper records a failed trial",
            cfg.optimized_metric,
            value,
            ", ".join(sorted(metrics)),
        )
        return None
    return float(value)
