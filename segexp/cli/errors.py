"""The one error policy of every command: a user error is one message and exit 2.

``exit_codes()`` wraps the body of every ``segexp`` command (and so of the train.py,
evaluate.py, predict.py and ``python -m segexp.*`` shims); ``hydra_entry`` runs a Hydra
app so that Hydra's own composition errors exit 2 as well:

- a ``UserError`` (bad config value, dataset problem at any sample, bad checkpoint,
  reproduce/resume request), also when it comes out of a DataLoader worker or through
  ``hydra.utils.instantiate``, prints ``error: <message>`` and exits 2;
- a mandatory config value left unset (``???``) or an interpolation that does not
  resolve (omegaconf) is a user error too: its key is named;
- our signal handling (``Interrupted``) exits 128 + signal number; Lightning's own
  SIGTERM exit (a ``SystemExit`` with code 0) becomes 143, so schedulers see the stop;
- a full disk or a read-only file system met while writing (``OSError`` ENOSPC, EDQUOT,
  EROFS, anywhere in the chain: torch reports a full disk as a RuntimeError) is a user
  error naming the folder and what is left intact;
- a non-finite training loss exits 1 with its message;
- anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segexp.errors import UserError

USER_ERROR_EXIT = 2  # every user error, ours or Hydra's

# Set once a command's own code runs (exit_codes); until then, a failure is Hydra's.
_reached = False


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _clean_message(error: BaseException) -> str:
    """The user-facing message; a DataLoader worker's re-raised copy carries the worker's
    traceback in its text, of which only the original message is kept."""
    text = str(error)
    if "Original Traceback" in text:
        marker = f"{type(error).__name__}: "
        position = text.rfind(marker)
        if position >= 0:
            text = text[position + len(marker) :]
    return text.strip()


def _omegaconf_message(error: BaseException) -> str | None:
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    key = getattr(error, "full_key", None) or ""
    if isinstance(error, MissingMandatoryValue):
        return (
            f"config key {key or '(unknown)'} has no value (it is ??? in the config); "
            f"set it on the command line, e.g. {key or 'KEY'}=VALUE"
        )
    if isinstance(error, InterpolationResolutionError):
        return f"config key {key}: {error.msg if hasattr(error, 'msg') else error}"
    if isinstance(error, ConfigAttributeError | ConfigKeyError):
        return f"config: {getattr(error, 'msg', error)} (check the key's spelling, or add it with +KEY=VALUE)"
    if isinstance(error, ValidationError):
        return f"config key {key}: {getattr(error, 'msg', error)}"
    return None


def _run_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not inside a Hydra job (compare, check ...)
        return None


def _disk_message(error: OSError) -> str:
    """A full disk or a read-only file system met while writing: the folder, and what is
    left intact (checkpoints and metrics.json are written whole or not at all)."""
    folder = _run_dir() or (Path(error.filename).parent if error.filename else Path.cwd())
    writing = f" while writing {error.filename}" if error.filename else ""
    if error.errno == errno.EROFS:
        return (
            f"{folder} is on a read-only file system{writing}; choose a writable place with "
            "hydra.run.dir=PATH."
        )
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        kept = (
            f"{last} is intact (checkpoints are written whole or not at all); free space, "
            f"then continue with: segexp train resume={folder}"
        )
    elif last.parent.is_dir():
        kept = (
            "No checkpoint was complete yet, and none was left half-written; free space and "
            "start again"
        )
    else:
        kept = "Free space and run the command again"
    return f"no space left on the device of {folder}{writing} ({error.strerror}). {kept}."


def user_message(error: BaseException) -> str | None:
    """The message to print for a user error, or None when ``error`` is a bug."""
    for link in _chain(error):
        if isinstance(link, UserError):
            return _clean_message(link)
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return _disk_message(link)
    if "omegaconf" in sys.modules:
        for link in _chain(error):
            message = _omegaconf_message(link)
            if message is not None:
                return message
    return None


def fail(message: str, code: int = USER_ERROR_EXIT) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _loaded_class(module: str, name: str) -> type | None:
    """``module.name`` if ``module`` was imported, else None: an exception class whose module
    was never imported cannot have been raised, and importing it only to test ``isinstance``
    would cost every command Lightning's import (seconds) before its first check ran."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


@contextmanager
def exit_codes() -> Iterator[None]:
    """Exit codes a scheduler can trust, and user errors without a traceback (see module doc)."""
    global _reached
    _reached = True
    try:
        yield
    except SystemExit as error:
        # Our own stop (segexp.run.signals.Interrupted, a SystemExit) keeps its code.
        sigterm = _loaded_class("pytorch_lightning.utilities.exceptions", "SIGTERMException")
        if sigterm is not None and isinstance(error, sigterm):
            print("segexp: stopped by SIGTERM", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGTERM) from error
        raise
    except Exception as error:
        non_finite = _loaded_class("segexp.run.guards", "NonFiniteLossError")
        if non_finite is not None and isinstance(error, non_finite):
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from error
        message = user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT) from None


def hydra_entry(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` app so that a command line Hydra cannot compose (a misspelled
    key, an unknown option, a bad override) exits 2 like every other user error.

    Hydra prints its own one-paragraph message for those and exits 1 before our code runs;
    an exit 1 after that (``exit_codes`` was entered) is left as it is.
    """
    try:
        main()
    except SystemExit as error:
        if error.code == 1 and not _reached:
            raise SystemExit(USER_ERROR_EXIT) from None
        raise


def hydra_command(hydra_main: Callable[[], Any]) -> None:
    """Run a ``segexp`` Hydra command from ``sys.argv``: a fast ``--help`` (``cli/help.py``),
    and a command line Hydra cannot compose exits 2 (``hydra_entry``)."""
    from segexp.cli.help import speed_up_help

    speed_up_help()
    hydra_entry(hydra_main)
