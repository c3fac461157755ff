"""Running a ``@hydra.main`` entry point, without importing torch (``--help`` stays fast)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

USER_ERROR_EXIT = 2  # every user error, ours or Hydra's

# Set once an entry point's own code runs (segexp.run.errors.exit_codes); until then, a
# failure is Hydra's.
_reached = False


def reached_our_code() -> None:
    global _reached
    _reached = True


def hydra_entry(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that a command line Hydra cannot compose (a
    misspelled key, an unknown option, a bad override) exits 2 like every other user error.

    Hydra prints its own one-paragraph message for those and exits 1 before our code runs;
    an exit 1 after that (``exit_codes`` was entered) is left as it is.
    """
    try:
        main()
    except SystemExit as error:
        if error.code == 1 and not _reached:
            raise SystemExit(USER_ERROR_EXIT) from None
        raise
