"""Sweep jobs: jobs that fail, or are pruned, without ending the sweep.

A multirun (grid, Optuna or W&B agent) runs many jobs in one process. One job
that diverges (NaN) or crashes must not take the other jobs down, and each job
must tell the sweeper what it scored in a form the sweeper accepts. A job the
Optuna pruner stopped (``segexp.track.pruning``) ends as pruned: ``pruned.txt`` in
its folder, ``trial_state: pruned`` in its W&B summary, the study told by the job.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
PRUNED_FILE = "pruned.txt"


def is_pruned(error: BaseException) -> bool:
    """True for Optuna's ``TrialPruned`` (optuna is only looked up if something imported it)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def run_job(
    train: Callable[[Any], Mapping[str, float]], cfg: Any, multirun: bool | None = None
) -> float | None:
    """Run ``train(cfg)`` as one sweep job and return ``cfg.optimized_metric``.

    Returns None instead of NaN or a missing metric: the Optuna sweeper records a
    failed trial and goes on. Under multirun, an exception is logged, written to the
    run folder (``error.txt``) and the job returns None, so the other jobs still
    run; in a single run it propagates as usual. A pruned trial (``TrialPruned``)
    writes ``pruned.txt`` instead and returns None (the study already knows). The W&B
    run is always finished, so the next job of the sweep starts a run of its own.
    """
    from segexp.run.job import hydra_context
    from segexp.track.loggers import finish_wandb

    if multirun is None:
        context = hydra_context()
        multirun = bool(context and context["multirun"])
    state = "complete" if multirun else None  # W&B summary's trial_state, in sweeps only
    try:
        metrics = train(cfg)
    except Exception as error:
        if is_pruned(error):
            log.info("%s; the sweep goes on with the next job", error)
            finish_wandb(state="pruned")
            run_dir = Path(cfg.paths.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / PRUNED_FILE).write_text(f"{error}\n")
            return None
        finish_wandb(exit_code=1, state="failed" if multirun else None)
        if not multirun:
            raise
        log.exception("job failed; the sweep goes on with the next job")
        run_dir = Path(cfg.paths.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        return None
    value = metrics.get(cfg.optimized_metric)
    if state and (value is None or not math.isfinite(value)):
        state = "failed"
    finish_wandb(metrics, state=state)
    if value is None or not math.isfinite(value):
        log.warning(
            "optimized_metric=%s is %s (known: %s); the sweeper records a failed trial",
            cfg.optimized_metric,
            value,
            ", ".join(sorted(metrics)),
        )
        return None
    return float(value)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # hydra is a dependency; this only keeps `compare` usable without it
    _HydraCallback = object


class SweepSummary(_HydraCallback):
    """Hydra callback: after a multirun, print and write the comparison of its jobs in the sweep folder."""

    def __init__(self, top_k: int = 3, plots: bool = True, html: bool = True) -> None:
        self.top_k = top_k
        self.plots = plots
        self.html = html

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = config.get("optimized_metric") or "val/mIoU"
        try:
            from segexp.track.compare import compare

            result = compare(
                sweep_dir,
                metric=metric,
                top_k=self.top_k,
                plots=self.plots,
                html=sweep_dir / "compare.html" if self.html else None,
            )
        except Exception as error:  # a summary must never turn a finished sweep into a failure
            log.warning("sweep summary of %s failed: %s", sweep_dir, error)
            return
        failed = sum(1 for row in result["rows"] if row[2] not in ("done", "pruned"))
        log.info("sweep summary (%s):\n%s", sweep_dir / "compare.md", result["markdown"])
        if failed:
            log.warning(
                "%d of %d jobs did not finish; see error.txt in their folders",
                failed,
                len(result["rows"]),
            )
