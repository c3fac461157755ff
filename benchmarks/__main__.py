"""``python -m benchmarks``: every figure of docs/benchmarks.md, each with its target and verdict.

    python -m benchmarks                    # all figures (about 13 min on a quiet 2-core machine)
    python -m benchmarks --quick            # tiny sizes: checks the suite runs (seconds per figure)
    python -m benchmarks --only overhead,metrics
    python -m benchmarks --only transfer    # init_from= vs from scratch on a second dataset
    python -m benchmarks --only sweep       # the same Optuna search with and without pruning
    python -m benchmarks --only budget      # budget= honoured; recipe=auto vs default per budget
    python -m benchmarks --only analysis    # segexp eval's analysis: time on/off, peak RSS
    python -m benchmarks --only quality --candidates   # compare candidate default recipes
    python -m benchmarks --only quality --candidates fpn-mobilenet_v2  # one of them
    python -m benchmarks --clock cpu        # budgets in CPU time (for a shared, loaded machine)

Ratios are measured side by side in one process (variants interleaved), so machine
speed cancels out; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.harness import REPO, Figure, Settings, quiet_lightning

FIGURES = (
    "overhead",
    "data",
    "metrics",
    "startup",
    "inference",
    "quality",
    "transfer",
    "sweep",
    "budget",
    "analysis",
)
TITLES = {
    "overhead": "1. Framework overhead (training step)",
    "data": "2. Data pipeline vs model",
    "metrics": "3. Evaluation: all metrics vs forward only",
    "startup": "4. Start-up",
    "inference": "5. Inference and peak memory",
    "quality": "6. Quality per minute (default recipe)",
    "transfer": "7. Transfer: init_from vs from scratch on a second dataset",
    "sweep": "8. Sweeps: Optuna with and without pruning",
    "budget": "9. Training to a time budget: honoured, and recipe=auto vs the default",
    "analysis": "10. Evaluation analysis: time and peak memory",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma list of {', '.join(FIGURES)}"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "outputs" / "bench", help="results folder"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="generated-data cache")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="quality budget clock"
    )
    parser.add_argument(
        "--candidates",
        nargs="?",
        const="all",
        default="",
        help="quality: also run candidate recipes (all, or a comma list of their labels)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figure(s) {unknown}; valid: {', '.join(FIGURES)}")
    return args


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(report: dict[str, list[Figure]], info: dict[str, str], args) -> str:
    """The figures as a docs/benchmarks.md table (machine and date in the heading)."""
    lines = [
        f"Measured {info['date']} on {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"load average {info['load_avg_1min']} at start, quality clock `{args.clock}`"
        f"{', QUICK sizes' if args.quick else ''}.",
        "",
        "| figure | measured | unit | target | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in report.items():
        for f in figures:
            value = "n/a" if f.value is None else f"{f.value:.4g}"
            lines.append(
                f"| {TITLES[name].split('.')[0]}. {f.name} | {value} | {f.unit} | {f.target} "
                f"| {f.verdict} | {f.note} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    out = args.out.resolve()
    data_dir = args.data_dir or (out / "data" if args.quick else REPO / "data")
    settings = Settings(
        quick=args.quick,
        out_dir=out,
        data_dir=data_dir.resolve(),
        clock=args.clock,
        candidates=args.candidates,
    )
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(
        f"segexp benchmarks ({'QUICK smoke sizes' if args.quick else 'full'}) on {info['cpu']}, "
        f"{info['cores']} cores, load {info['load_avg_1min']}, {info['date']}",
        flush=True,
    )

    report: dict[str, list[Figure]] = {}
    started = time.perf_counter()
    for name in args.only:
        print(f"\n{TITLES[name]}", flush=True)
        began = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            figures = module.run(settings)
        except Exception as error:  # noqa: BLE001 - one broken figure must not hide the others
            figures = [
                Figure(
                    f"{name} failed", None, target="<= 0", note=f"{type(error).__name__}: {error}"
                )
            ]
        report[name] = figures
        for figure in figures:
            print(figure.line(), flush=True)
        print(f"  ({time.perf_counter() - began:.0f} s)", flush=True)

    total = time.perf_counter() - started
    print(f"\nSummary ({total / 60:.1f} min):")
    verdicts = [(n, f) for n, figs in report.items() for f in figs if f.target]
    for name, figure in verdicts:
        print(
            f"  {figure.verdict:<7} {name:<10} {figure.name}: {figure.value if figure.value is None else round(figure.value, 4)} (target {figure.target})"
        )
    info["total_min"] = f"{total / 60:.1f}"
    results = {
        "machine": info,
        "quick": args.quick,
        "clock": args.clock,
        "figures": {
            name: [{**vars(f), "verdict": f.verdict} for f in figs] for name, figs in report.items()
        },
        "quality": settings.cache.get("quality_curves"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(report, info, args))
    print(f"results: {out / 'results.json'}")
    return 1 if any(f.verdict == "SKIPPED" and "failed" in f.name for _, f in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
