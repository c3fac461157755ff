"""Experiment loggers. W&B runs offline unless the user set W&B up to run online.

An online set-up whose server does not answer (an API key, but no network: a compute
node, a train, a firewall) logs offline instead, with a warning, rather than waiting
on W&B's own timeouts and ending in a traceback.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# How long the W&B server gets to accept a connection before the run logs offline.
WANDB_CONNECT_TIMEOUT_S = 5.0


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


def wandb_server_problem(timeout: float = WANDB_CONNECT_TIMEOUT_S) -> str | None:
    """Why the W&B server cannot be reached (no TCP connection within ``timeout``), or None.

    The server is ``WANDB_BASE_URL`` or W&B's default. Name lookup and connection run in
    a daemon thread, so a lookup that hangs cannot hold the run longer than ``timeout``.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        import wandb

        url = wandb.Settings().base_url
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                outcome.append(None)
        except OSError as error:
            outcome.append(f"{url} does not answer ({error})")

    thread = threading.Thread(target=connect, name="wandb-server-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{url} does not answer within {timeout:g} s"


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
    if mode == "online" and (problem := wandb_server_problem()):
        log.warning(
            "W&B is set up to log online, but %s; logging offline to %s/wandb instead "
            "(upload later with `wandb sync %s/wandb/offline-run-*`; WANDB_MODE=offline skips this check)",
            problem,
            run_dir,
            run_dir,
        )
        mode = "offline"
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


def finish_wandb(
    metrics: dict[str, float] | None = None, exit_code: int = 0, state: str | None = None
) -> None:
    """Put the final metrics in the W&B summary and close the run, so the next multirun job gets its own.

    ``state`` (a sweep job's ending: ``complete``, ``pruned``, ``failed``) goes into the
    summary as ``trial_state``. A no-op when W&B was never imported or has no active run
    (e.g. ``logger=csv``, or rank > 0).
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
    if state:
        wandb.run.summary["trial_state"] = state
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


def _require(module: str, logger: str, extra: str) -> None:
    import importlib.util

    from segexp.errors import UserError

    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"logger={logger} needs the {module} package, which is not installed: "
            f"pip install -e '.[{extra}]' (or logger=csv)"
        )


def tensorboard_logger(save_dir: str, name: str = "tensorboard", **kwargs: Any):
    """Lightning's ``TensorBoardLogger`` writing to ``<save_dir>/<name>`` (no version folder).

    A resumed run (same run folder) continues the same log dir; ``tensorboard --logdir
    outputs`` shows every run. No placeholder ``hp_metric``: ``SegImageLogger`` writes
    the HPARAMS table (``tensorboard_hparams``) with the run's metrics when fit ends.
    """
    _require("tensorboard", "tensorboard", "tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger

    kwargs.setdefault("default_hp_metric", False)
    return TensorBoardLogger(save_dir=save_dir, name=name, version="", **kwargs)


def tensorboard_hparams(logger: Any, params: dict[str, Any], metric_names: list[str]) -> None:
    """TensorBoard's HPARAMS table for this run: the flattened ``params`` and the metrics
    named (TensorBoard shows the latest value of each metric's scalar series)."""
    from lightning_fabric.utilities.logger import _flatten_dict
    from torch.utils.tensorboard.summary import hparams

    flat = {
        key: value if isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in _flatten_dict(params).items()
    }
    writer = logger.experiment._get_file_writer()
    for summary in hparams(flat, dict.fromkeys(metric_names, 0.0)):
        writer.add_summary(summary)
    writer.flush()


def default_mlflow_uri(root: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an SQLite store in ``<root or cwd>/mlruns/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(root or os.getcwd()) / 'mlruns' / 'mlflow.db').resolve()}"


def mlflow_logger(
    save_dir: str,
    experiment_name: str = "segexp",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    **kwargs: Any,
):
    """An MLflow logger whose run id is kept in ``<save_dir>/mlflow_id.txt`` (resume continues it).

    ``tracking_uri`` null: ``default_mlflow_uri()`` (an SQLite file under ``mlruns/`` where
    train.py runs, artifacts beside it in ``mlruns/artifacts``); any MLflow URI works
    (``http://host:5000``, ``sqlite:///path.db``). ``run_name`` null: built from the
    overrides like the W&B name; the multirun's sweep folder is the ``sweep`` tag.
    """
    _require("mlflow", "mlflow", "mlflow")
    from segexp.run.job import hydra_context, sweep_group
    from segexp.run.job import run_name as name_from_overrides
    from segexp.track.mlflow_run import ResumableMLFlowLogger

    context = hydra_context() or {}
    if run_name is None:
        run_name = name_from_overrides(
            context.get("overrides", []), context.get("job_num"), context.get("fixed_keys", ())
        )
    tags = {key: str(value) for key, value in (tags or {}).items()}
    if (sweep := sweep_group(context.get("sweep_dir"))) is not None:
        tags.setdefault("sweep", sweep)
    tags.setdefault("run_dir", str(Path(save_dir).resolve()))
    tracking_uri = tracking_uri or default_mlflow_uri()
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = artifact_location or str(database.parent / "artifacts")
    return ResumableMLFlowLogger(
        run_dir=save_dir,
        run_id=run_id,
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        tags=tags,
        **kwargs,
    )
