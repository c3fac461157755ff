"""What ``budget=`` means in seconds: a wall time (``00:10:00``, ``600``, ``10m``, ``2h``), or
``auto``, the SLURM job's remaining time (``squeue``) less a margin for the last checkpoint
and the exit.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from segexp.errors import UserError

AUTO_MARGIN_S = 60.0  # budget=auto: kept free of the SLURM job's remaining time ...
AUTO_MARGIN_FRACTION = 0.05  # ... or this fraction of it, whichever is larger


class BudgetError(UserError):
    """A ``budget=`` value that cannot be used; the message says what to write instead."""


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds of ``[days-]HH:MM:SS``, ``MM:SS``, ``90``, ``90s``, ``10m``, ``1.5h``; ValueError otherwise."""
    text = str(text).strip()
    days = 0
    if re.fullmatch(r"\d+-[\d:]+", text):
        head, text = text.split("-", 1)
        days = int(head)
    if ":" in text:
        parts = text.split(":")
        if len(parts) > 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
            raise ValueError(text)
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
        return days * 86400 + seconds
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?", text)
    if not match:
        raise ValueError(text)
    return days * 86400 + float(match.group(1)) * _UNITS[match.group(2) or "s"]


def slurm_time_left(job_id: str | None = None) -> float | None:
    """Seconds left to the SLURM job (``squeue -h -j $SLURM_JOB_ID -o %L``); None when unlimited."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise BudgetError(
            "budget=auto reads the SLURM job's remaining time, but SLURM_JOB_ID is not set "
            "(not inside a SLURM job); give a wall time instead, e.g. budget=00:10:00."
        )
    if shutil.which("squeue") is None:
        raise BudgetError(
            "budget=auto: squeue is not on PATH, so the job's remaining time cannot be read; "
            "give a wall time instead, e.g. budget=00:10:00."
        )
    result = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%L"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    left = result.stdout.strip()
    if result.returncode != 0 or not left:
        raise BudgetError(
            f"budget=auto: `squeue -h -j {job_id} -o %L` failed ({result.stderr.strip() or 'no output'}); "
            "give a wall time instead, e.g. budget=00:10:00."
        )
    if left.upper() in ("UNLIMITED", "NOT_SET", "INVALID"):
        return None
    try:
        return parse_duration(left)
    except ValueError:
        raise BudgetError(
            f"budget=auto: squeue reported {left!r} as the job's remaining time, which is not "
            "[days-]HH:MM:SS; give a wall time instead, e.g. budget=00:10:00."
        ) from None


def auto_margin(time_left: float) -> float:
    """What budget=auto keeps free of the job's remaining time: the last checkpoint, the exit."""
    return max(AUTO_MARGIN_S, AUTO_MARGIN_FRACTION * time_left)


def parse_budget(
    value: Any, time_left: Callable[[], float | None] = slurm_time_left
) -> float | None:
    """``budget=`` in seconds: None (no budget), a wall time, or ``auto`` (SLURM's remaining
    time minus :func:`auto_margin`). Raises BudgetError with the fix for anything else."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    if isinstance(value, bool):
        raise BudgetError(f"budget={value}: give a wall time such as budget=00:10:00 (or null).")
    if isinstance(value, str) and value.strip().lower() == "auto":
        left = time_left()
        if left is None:
            raise BudgetError(
                "budget=auto: this SLURM job has no time limit, so there is nothing to plan for; "
                "give a wall time instead, e.g. budget=02:00:00."
            )
        seconds = left - auto_margin(left)
        if seconds <= 0:
            raise BudgetError(
                f"budget=auto: the SLURM job has {left:.0f} s left, less than the "
                f"{auto_margin(left):.0f} s margin kept for the checkpoint and exit; submit "
                "with a longer --time."
            )
        return seconds
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
    except ValueError:
        raise BudgetError(
            f"budget={value!r} is not a wall time; write HH:MM:SS (budget=00:10:00), seconds "
            "(budget=600), 10m / 2h, or budget=auto inside a SLURM job."
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise BudgetError(f"budget={value!r}: the time must be positive, e.g. budget=00:10:00.")
    return seconds


__all__ = ["BudgetError", "parse_budget", "parse_duration"]
