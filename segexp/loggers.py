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
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` that writes under the run folder and never prompts for a login."""
    from pytorch_lightning.loggers import WandbLogger

    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
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
        **kwargs,
    )
