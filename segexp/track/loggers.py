"""Experiment loggers. W&B runs offline unless the user set W&B up to run online."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any


def wandb_credentials_present() -> bool:
    """True when W&B could log in without prompting (API key in the env or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(offline: bool | None = None) -> str:
    """'offline' or 'online' (or 'disabled' if WANDB_MODE says so); never a mode that prompts.

    An explicit ``offline`` wins; then ``WANDB_MODE``; else online only with credentials.
    """
    if offline is not None:
        return "offline" if offline else "online"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("offline", "online", "disabled"):
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if wandb_credentials_present() else "offline"


def run_config_extras(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What W&B records besides the resolved config: Hydra choices, overrides, code, packages."""
    from segexp.run.job import hydra_context
    from segexp.run.rundir import run_metadata

    context = hydra_context() or {}
    meta = run_metadata()
    return {
        "hydra_choices": context.get("choices", {}),
        "overrides": context.get("overrides", []),
        "run": {
            "dir": str(Path(run_dir).resolve()),
            "git_commit": meta["git"]["commit"],
            "git_dirty": meta["git"]["dirty"],
            "command": " ".join(meta["command"]),
            "packages": meta["packages"],
            "host": meta["host"],
        },
    }


def wandb_logger(
    save_dir: str,
    project: str = "segexp",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    job_type: str = "train",
    offline: bool | None = None,
    log_model: bool = False,
    id: str | None = None,
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` that writes under the run folder and never prompts for a login.

    train.py fills ``name`` with the overrides (``model=fpn,loss=dice``) and ``group``
    with the multirun's sweep folder (``segexp.run.reproduce.name_wandb_run``), so a
    sweep's jobs sit together in the dashboard; ``id`` defaults to the one saved in
    ``<save_dir>/wandb_id.txt`` (a resumed run continues its W&B run), else a new one
    that is saved there (``segexp.run.wandb_id.choose_wandb_id``). The config W&B receives at start
    holds Hydra's choices, the overrides, git commit/dirty, packages, command line
    and run folder; train.py adds the resolved config.
    """
    from pytorch_lightning.loggers import WandbLogger

    from segexp.run.wandb_id import choose_wandb_id

    run_dir = Path(save_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = wandb_mode(offline)
    id = choose_wandb_id(run_dir, id)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        group=group,
        name=name,
        tags=list(tags or []),
        job_type=job_type,
        offline=mode == "offline",
        mode=mode,
        log_model=log_model,
        id=id,
        config=run_config_extras(run_dir),
        **kwargs,
    )


def finish_wandb(metrics: dict[str, float] | None = None, exit_code: int = 0) -> None:
    """Put the final metrics in the W&B summary and close the run, so the next multirun job gets its own.

    A no-op when W&B was never imported or has no active run (e.g. ``logger=csv``, or rank > 0).
    """
    import math
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    if metrics:
        # NaN -> None: the summary keeps "no value" rather than a NaN that breaks sorting in the UI.
        wandb.run.summary.update(
            {key: None if math.isnan(value) else value for key, value in metrics.items()}
        )
    wandb.finish(exit_code=exit_code)


def offline_runs(run_dir: str | os.PathLike) -> list[Path]:
    """The offline W&B runs a run folder holds (``wandb/offline-run-*``), oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def read_offline_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read an offline W&B run back with wandb's own reader (``wandb leet inspect``).

    Returns ``wandb leet inspect --summary --json`` (config, summary, name, run_id,
    state, ...) plus ``group`` and ``history`` (every logged row) from the run's records.
    """
    import json
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("wandb")
    exe = str(exe) if exe.exists() else shutil.which("wandb")
    if exe is None:
        raise FileNotFoundError("read_offline_run: no `wandb` command next to Python or on PATH")

    def inspect(*args: str) -> str:
        result = subprocess.run(
            [exe, "leet", "inspect", *args, str(path)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"wandb leet inspect {' '.join(args)} {path} failed: {result.stderr.strip()}"
            )
        return result.stdout

    run = json.loads(inspect("--summary", "--json"))
    run["group"], run["history"] = None, []
    for line in inspect("--json").splitlines():
        record = json.loads(line)
        if record.get("type") == "run":
            run["group"] = record["run"].get("run_group")
        elif record.get("type") == "history":
            run["history"].append(record["history"]["item"])
    return run
