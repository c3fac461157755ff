"""What Hydra says about the running job: multirun or not, its overrides, and the run's name.

Read once per job, before the DDP launcher rewrites ``sys.argv`` for its child
processes (``segexp.run.distributed``), and passed on in the config: the W&B logger's
``name`` and ``group`` are filled in by ``segexp.run.reproduce.prepare_config``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

# Overrides left out of run names: they say where things go, not what was tried.
NAME_EXCLUDE = ("logger", "paths.", "hparams_search", "ckpt_path", "hydra.")


def hydra_context() -> dict[str, Any] | None:
    """The running Hydra job: multirun or not, task overrides, group choices, sweep folder.

    None outside a Hydra app (e.g. a test that composed the config itself).
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    choices = hydra_cfg.runtime.get("choices") or {}
    return {
        "multirun": multirun,
        "overrides": list(hydra_cfg.overrides.get("task") or []),
        "choices": {key: value for key, value in choices.items() if not key.startswith("hydra/")},
        "sweep_dir": hydra_cfg.sweep.dir if multirun else None,
        "job_num": hydra_cfg.job.get("num") if multirun else None,
        "fixed_keys": command_line_fixed_keys() if multirun else set(),
    }


def command_line_fixed_keys(argv: Sequence[str] | None = None) -> set[str]:
    """Keys the command line sets to one value for every job of a multirun (not swept).

    They are left out of run names, so a job's name shows what varies in the sweep.
    Only the in-process launchers see the original command line; elsewhere nothing is left out.
    """
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if argv is None:
        argv = sys.argv[1:]
    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # not a Hydra command line (e.g. a submitit job): keep every override
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()}


def override_key(override: str) -> str:
    """'+optimizer.lr=0.1' -> 'optimizer.lr'."""
    return override.split("=", 1)[0].lstrip("+~")


def run_name(
    overrides: Sequence[str],
    job_num: int | None = None,
    exclude: Collection[str] = (),
    max_len: int = 128,
) -> str | None:
    """A readable run name from the overrides, e.g. ``model=fpn,loss=dice``.

    Multirun jobs get their job number in front (``3:model=fpn``) so names stay
    unique and sort in launch order; a plain run with no overrides gets None
    (W&B then picks a name). Keys in ``exclude`` (the sweep's fixed overrides) are left out.
    """
    parts = [
        o.lstrip("+~")
        for o in overrides
        if not override_key(o).startswith(NAME_EXCLUDE) and override_key(o) not in exclude
    ]
    name = ",".join(parts)
    if len(name) > max_len:
        name = name[: max_len - 3] + "..."
    if job_num is not None:
        return f"{job_num}:{name}" if name else f"job{job_num}"
    return name or None


def sweep_group(sweep_dir: str | Path | None) -> str | None:
    """The W&B group of a multirun's jobs: the sweep folder's last two parts (its date and time)."""
    if not sweep_dir:
        return None
    return "_".join(Path(sweep_dir).parts[-2:])
