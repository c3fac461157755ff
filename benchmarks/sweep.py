"""8. Sweeps: the same Optuna search with and without pruning.

Two ``python train.py hparams_search=optuna`` sweeps on the default data, with the same
search space (learning rate over four decades, weight decay, loss), sampler, seed and
trial budget; one with the median pruner, one without (``hparams_search.pruner=none``).
Each study's journal says how many epochs every trial trained (its reported epochs) and
the best val mIoU. Target: pruning keeps the best within 0.02 of the unpruned sweep's
while training at most half the epochs.

The sampler is ``random`` (``SAMPLER``): both sweeps then try the same configurations,
trial for trial, and the figure measures what pruning costs (a good configuration
stopped too early) and saves. With TPE the two studies part ways at the first pruned
trial (the model sees a pruned curve instead of a finished one), and the difference of
the two bests mostly measures where two 16-trial searches happened to wander
(docs/benchmarks.md has both).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchmarks.harness import Figure, Settings, python, run_checked

TRIALS, EPOCHS = 16, 10
SAMPLER = "random"  # the same configurations on both sides (see above); "tpe" for TPE's
QUICK_TRIALS, QUICK_EPOCHS = 3, 2
# The search: the default model; a learning rate from hopeless to good, weight decay, loss.
SPACE = [
    "hparams_search=optuna",
    "~hydra.sweeper.params.model",
    "optimizer.lr=tag(log, interval(1e-5, 1e-1))",  # replaces the config's lr range
    "hparams_search.n_startup_trials=2",  # random, never pruned; then TPE and the pruner act
    "hparams_search.warmup_epochs=1",
]
QUIET = [
    "logger=csv",
    "test=false",
    "callbacks.image_logger=null",
    "trainer.enable_progress_bar=false",
]


def run_sweep(settings: Settings, pruner: str, trials: int, epochs: int) -> dict:
    """One sweep in its own folder; its trials, epochs trained, best value and wall time."""
    import optuna

    from segexp.track.study import open_storage, state_counts

    sweep_dir = settings.out_dir / "sweep" / pruner
    shutil.rmtree(sweep_dir, ignore_errors=True)
    args = [
        python(),
        "train.py",
        *SPACE,
        f"hparams_search.pruner={pruner}",
        f"hparams_search.sampler={SAMPLER}",
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.max_epochs={epochs}",
        *QUIET,
        *settings.overrides(),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    began = time.perf_counter()
    run_checked(args)
    wall = time.perf_counter() - began
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name="segexp", storage=open_storage(str(Path(sweep_dir) / "optuna.journal"))
    )
    done = study.get_trials(deepcopy=False)
    return {
        "pruner": pruner,
        "trials": state_counts(done),
        "epochs": sum(len(t.intermediate_values) for t in done),
        "best": study.best_value,
        "best_params": study.best_params,
        "wall_s": wall,
    }


def run(settings: Settings) -> list[Figure]:
    trials, epochs = (QUICK_TRIALS, QUICK_EPOCHS) if settings.quick else (TRIALS, EPOCHS)
    full = run_sweep(settings, "none", trials, epochs)
    pruned = run_sweep(settings, "median", trials, epochs)
    figures = []
    for result in (full, pruned):
        label = f"pruner={result['pruner']}"
        counts = ", ".join(f"{k} {v}" for k, v in result["trials"].items())
        figures += [
            Figure(f"{label}: trials", sum(result["trials"].values()), "", note=counts),
            Figure(f"{label}: epochs trained", result["epochs"], "epochs"),
            Figure(f"{label}: best val mIoU", result["best"], "", note=str(result["best_params"])),
            Figure(f"{label}: wall time", result["wall_s"] / 60, "min"),
        ]
    figures += [
        Figure(
            "pruned best - unpruned best (val mIoU)",
            pruned["best"] - full["best"],
            "",
            ">= -0.02",
            note=f"{trials} trials of {epochs} epochs each way, sampler={SAMPLER}",
        ),
        Figure(
            "epochs trained, pruned / unpruned",
            pruned["epochs"] / max(full["epochs"], 1),
            "x",
            "<= 0.5",
            note=f"wall time ratio {pruned['wall_s'] / full['wall_s']:.2f}",
        ),
    ]
    if settings.quick:  # tiny sweeps: the numbers mean nothing, so nothing is judged
        for figure in figures:
            figure.target = ""
    return figures
