"""Re-run an experiment from its run folder, or resume a killed one.

    python train.py reproduce=<run folder> [key=value ...]   # a NEW run from the saved config
    python train.py resume=<run folder>                      # the SAME run, from last.ckpt

Both work by rewriting the command line before Hydra composes
(``segexp.cli.argv.rewrite_argv``): Hydra then composes the run folder's saved
``.hydra/config.yaml`` (``--config-path <run>/.hydra --config-name config``), the
documented Hydra way, so the new run's own ``.hydra/config.yaml`` is exactly what
ran. ``reproduce`` lets Hydra pick a new output folder (the old one is never
touched); ``resume`` points ``hydra.run.dir`` at the old folder with
``hydra.output_subdir=null`` so the saved config is not rewritten.
``prepare_config`` then (inside the Hydra job) points ``ckpt_path`` at
``last.ckpt`` and gives W&B the run's id so the resumed run continues it.

This module imports no torch at import time: ``--help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segexp.errors import UserError
from segexp.run.wandb_id import choose_wandb_id, new_wandb_id, read_wandb_id


class ReproduceError(UserError):
    """A reproduce=/resume= request that cannot be honoured; the message says why and what to do."""


def saved_config(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/.hydra/config.yaml``, or a ReproduceError that says what is wrong."""
    run_dir = Path(run_dir)
    config = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise ReproduceError(
            f"{run_dir} is not a folder; pass a run folder (outputs/<date>/<time>)."
        )
    if not config.is_file():
        hint = ""
        if run_dir.name in (".hydra", "checkpoints"):
            hint = f" (did you mean its parent, {run_dir.parent}?)"
        raise ReproduceError(
            f"{run_dir} has no .hydra/config.yaml, so it is not a train.py run folder{hint}. "
            "A run folder holds .hydra/, checkpoints/ and metrics.json."
        )
    return config


def _wandb_entry(cfg: Any) -> Any | None:
    for entry in (cfg.get("logger") or {}).values():
        if entry and "wandb" in str(entry.get("_target_", "")).lower():
            return entry
    return None


def resume_from(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir`` that loads (last, best-*, hpc_ckpt_*), said on stderr."""
    import sys

    from segexp.run.ckpt_io import choose_resume_checkpoint
    from segexp.run.ranks import is_global_zero

    choice = choose_resume_checkpoint(run_dir)
    if choice.path is None and choice.skipped:
        unreadable = "; ".join(f"{path}: {why}" for path, why in choice.skipped)
        raise ReproduceError(
            f"resume={run_dir}: none of its checkpoints loads ({unreadable}). Start it again "
            f"with: python train.py reproduce={run_dir}"
        )
    if choice.path is None:
        raise ReproduceError(
            f"resume={run_dir}: there is no checkpoint (last.ckpt, best-*.ckpt) in "
            f"{run_dir / 'checkpoints'}; the run "
            f"stopped before its first checkpoint. Start it again with: python train.py "
            f"reproduce={run_dir}"
        )
    if is_global_zero():
        print(f"segexp: resume={run_dir}: {choice.describe()}", file=sys.stderr, flush=True)
    return choice.path


def prepare_config(cfg: Any) -> Any:
    """Fill in what a reproduce/resume run needs; a no-op config change for other runs.

    - resume: ``ckpt_path`` = the run's newest checkpoint that loads (``resume_from``) and
      the W&B logger continues the run's W&B id;
    - reproduce: the W&B logger starts a new W&B run;
    - every run with a W&B logger gets its id fixed up front and written to
      ``<run folder>/wandb_id.txt``, so a later resume finds it.
    """
    from omegaconf import open_dict

    wandb = _wandb_entry(cfg)
    with open_dict(cfg):
        if cfg.get("resume"):
            run_dir = Path(cfg.resume)
            last = run_dir / "checkpoints" / "last.ckpt"
            if (run_dir / "metrics.json").is_file():  # written only when a run completes
                raise ReproduceError(
                    f"resume={run_dir}: the run already finished (it has metrics.json); nothing "
                    f"to resume. To train it longer, start from its weights: python train.py "
                    f"ckpt_path={last} trainer.max_epochs=<more>; to re-run it: reproduce={run_dir}"
                )
            cfg.ckpt_path = str(resume_from(run_dir))
            if wandb is not None:
                run_id = read_wandb_id(run_dir)
                if run_id:
                    wandb.id = run_id
                    wandb.resume = "allow"
        elif wandb is not None and cfg.get("reproduce"):
            # A reproduction is a new W&B run, even if the original fixed its id.
            wandb.id = new_wandb_id()
        if wandb is not None:
            # Fixed before the logger exists, so every rank and a later resume agree on it.
            wandb.id = choose_wandb_id(cfg.paths.output_dir, wandb.get("id"))
            name_wandb_run(wandb)
    return cfg


def name_wandb_run(wandb: Any) -> None:
    """Fill the W&B logger's ``name`` (the job's overrides) and ``group`` (the sweep folder).

    Done here, before the DDP launcher rewrites ``sys.argv`` for its children, because
    the name leaves out the keys the command line fixes for every job of a sweep.
    """
    import os

    from segexp.run.job import hydra_context, run_name, sweep_group

    context = hydra_context() or {}
    if wandb.get("name") is None:
        wandb.name = run_name(
            context.get("overrides", []), context.get("job_num"), context.get("fixed_keys", ())
        )
    if wandb.get("group") is None and not os.environ.get("WANDB_SWEEP_ID"):
        wandb.group = sweep_group(context.get("sweep_dir"))


__all__ = ["ReproduceError", "prepare_config", "saved_config"]
