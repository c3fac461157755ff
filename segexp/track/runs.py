"""Run folders as data: find them, read each one's overrides, status and final metrics.

A run folder is any folder with ``.hydra/config.yaml``; its numbers come from
``metrics.json``, its parameters from ``.hydra/overrides.yaml`` and its curves from
``csv/metrics.csv``. ``segexp.track.compare`` tables and plots what this reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from segexp.errors import UserError

CURVE_FILE = Path("csv") / "metrics.csv"


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder under ``root`` (``root`` itself if it is one), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"compare: {root} is not a folder; pass a multirun/ or outputs/ folder")
    runs = [config.parent.parent for config in root.rglob(".hydra/config.yaml")]
    # Numeric job folders (0, 1, ..., 10) in launch order, not 0, 1, 10, 2.
    return sorted(
        runs, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(p))]
    )


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """['model=fpn', 'optimizer.lr=1e-3', '+x=1'] -> {'model': 'fpn', 'optimizer.lr': 0.001, 'x': 1}.

    Values are typed by Hydra's own override parser, as the run saw them (``false`` ->
    False, ``[1,2]`` -> [1, 2]); deletions (``~key``) carry no value and are left out; an
    override the parser does not accept keeps its text.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params: dict[str, Any] = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:  # not Hydra syntax (hand-written file): key and text as written
            if "=" in text:
                key, value = text.split("=", 1)
                params[key.lstrip("+~")] = value
            continue
        if override.is_delete():
            continue
        key = override.get_key_element().lstrip("+~")
        params[key] = text.split("=", 1)[1] if override.is_sweep_override() else override.value()
    return params


def load_run(run_dir: Path, root: Path) -> dict[str, Any] | None:
    """One run: its name (path under root), status, overridden params and final metrics;
    None, with a warning on stderr naming the file, when one of its files is unreadable."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    metrics_file = run_dir / "metrics.json"
    try:
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        if not isinstance(metrics, dict) or not isinstance(overrides or [], list):
            raise ValueError("not the layout segexp writes")
    except (OSError, ValueError, yaml.YAMLError) as error:
        why = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(
            f"compare: warning: skipping {run_dir}: cannot read its metrics.json or "
            f".hydra/overrides.yaml ({why})",
            file=sys.stderr,
            flush=True,
        )
        return None
    if metrics_file.exists():
        status = "done"
    elif (run_dir / "error.txt").exists():
        status = "failed"
    elif (run_dir / "pruned.txt").exists():  # stopped early by the Optuna pruner
        status = "pruned"
    else:
        status = "incomplete"
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    return {
        "run": name,
        "dir": run_dir,
        "status": status,
        "params": parse_overrides(overrides or []),
        "metrics": metrics,
    }


def metric_value(run: dict[str, Any], metric: str) -> float | None:
    """The run's final ``metric`` as a float, or None when it is missing or not finite."""
    value = run["metrics"].get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sort_runs(runs: list[dict[str, Any]], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """Best first; runs without the metric (failed, NaN, incomplete) last."""
    if mode not in ("max", "min"):
        raise UserError(f"compare: mode={mode!r} is not valid (valid: max, min)")
    sign = -1 if mode == "max" else 1
    return sorted(
        runs,
        key=lambda r: (metric_value(r, metric) is None, sign * (metric_value(r, metric) or 0.0)),
    )


def split_params(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(parameters whose value differs between runs, {parameter: value} shared by all runs)."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run["params"] if key not in keys]
    varying, common = [], {}
    for key in keys:
        values = {json.dumps(run["params"].get(key), sort_keys=True) for run in runs}
        if len(values) > 1 or len(runs) == 1:
            varying.append(key)
        else:
            common[key] = runs[0]["params"][key]
    return varying, common


def load_runs(roots: Sequence[str | Path]) -> tuple[Path, list[dict[str, Any]]]:
    """(the folder run names are relative to, every run under ``roots``), each run once."""
    roots = [Path(r) for r in roots]
    if len(roots) == 1:
        base = roots[0]
    else:
        base = Path(os.path.commonpath([r.resolve() for r in roots]))
        roots = [r.resolve() for r in roots]
    seen: set[Path] = set()
    runs = []
    for root in roots:
        run_dirs = find_runs(root)
        if not run_dirs:
            raise UserError(f"compare: no run folders (with .hydra/config.yaml) under {root}")
        for run_dir in run_dirs:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                run = load_run(run_dir, base)
                if run is not None:
                    runs.append(run)
    return base, runs


def format_value(value: Any) -> str:
    """A table cell: empty for None, 4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_curve(run_dir: Path, column: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``column`` from a run's ``csv/metrics.csv`` (Lightning's CSVLogger)."""
    path = run_dir / CURVE_FILE
    if not path.exists():
        return [], []
    epochs, values = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            value, epoch = row.get(column), row.get("epoch")
            if value not in (None, "") and epoch not in (None, ""):
                epochs.append(float(epoch) + 1)  # epoch 0 ends after one epoch of training
                values.append(float(value))
    return epochs, values
