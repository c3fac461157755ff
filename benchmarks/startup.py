"""Figure 4: start-up. ``segexp --help``, ``segexp train --help`` / ``--cfg job`` vs importing
torch + Lightning, and the time from ``python train.py`` to its first training step.

Each command runs in a fresh Python process, alternated, best of N. Whether the
script imported torch or Lightning is checked by running it in a wrapper that
inspects ``sys.modules`` afterwards. The first-step time uses the default recipe
(data already generated, as on every run after the first) with a callback that
records the moment the first step ends and stops the run.
"""

from __future__ import annotations

import json
import sys
import time

import pytorch_lightning as pl

from benchmarks.harness import (
    Figure,
    Settings,
    best,
    interleaved,
    prepared_datamodule,
    python,
    run_checked,
)

TARGET = "<= 0.15"
HEAVY = ("torch", "pytorch_lightning", "lightning", "torchmetrics", "segmentation_models_pytorch")

# Runs the `segexp` command the way its console script does, then lists heavy modules loaded.
PROBE = """
import sys
from segexp.cli.main import main
sys.argv = ["segexp", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""
SEGEXP = [sys.executable, "-m", "segexp"]  # the same as the installed `segexp` script


def command_seconds(args: list[str]) -> float:
    began = time.perf_counter()
    run_checked(args)
    return time.perf_counter() - began


def heavy_modules(script_args: list[str]) -> list[str]:
    code = PROBE.format(heavy=HEAVY)
    out = run_checked([python(), "-c", code, *script_args])
    line = [x for x in out.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY=") :].split(",") if m]


class FirstStepStop(pl.Callback):
    """Writes the wall-clock time when the first training step ends to ``out``, then stops."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.out, "w") as handle:
            json.dump({"first_step_end": time.time()}, handle)
        trainer.should_stop = True


def first_step_seconds(settings: Settings) -> float:
    out = settings.out_dir / "first_step.json"
    out.unlink(missing_ok=True)
    run_dir = settings.out_dir / "first-step-run"
    args = [
        python(),
        "train.py",
        *settings.overrides(),
        f"hydra.run.dir={run_dir}",
        "test=false",
        "+callbacks.first_step._target_=benchmarks.startup.FirstStepStop",
        f"+callbacks.first_step.out={out}",
    ]
    # Generate the data first (a one-time cost per dataset), so the figure is every later run's.
    prepared_datamodule(settings.compose())
    began = time.time()
    run_checked(args)
    return json.loads(out.read_text())["first_step_end"] - began


def run(settings: Settings) -> list[Figure]:
    repeats = 1 if settings.quick else 3
    commands = {
        "import torch, pytorch_lightning": [python(), "-c", "import torch, pytorch_lightning"],
        "segexp --help": [*SEGEXP, "--help"],
        "segexp train --help": [*SEGEXP, "train", "--help"],
        "segexp train --cfg job": [*SEGEXP, "train", "--cfg", "job"],
    }
    results = interleaved(
        {k: (lambda c=c: command_seconds(c)) for k, c in commands.items()},
        repeats,
        warmup=not settings.quick,
    )
    baseline = best(results["import torch, pytorch_lightning"])
    figures = [
        Figure(
            "python -c 'import torch, pytorch_lightning'", baseline, "s", note=f"best of {repeats}"
        )
    ]
    for name in ("segexp --help", "segexp train --help", "segexp train --cfg job"):
        seconds = best(results[name])
        loaded = heavy_modules(name.split()[1:])
        note = f"imports {', '.join(loaded)}" if loaded else "imports no torch/Lightning"
        figures.append(Figure(f"{name}", seconds, "s", note=note))
        # Importing torch here would be a miss whatever the timing says.
        figures.append(
            Figure(
                f"{name} / import torch+PL",
                seconds / baseline if not loaded else max(1.0, seconds / baseline),
                "x",
                TARGET,
            )
        )
    figures.append(
        Figure(
            "python train.py -> first step done (default recipe)",
            first_step_seconds(settings),
            "s",
            note="data cached; incl. W&B init",
        )
    )
    return figures
