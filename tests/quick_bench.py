"""``python -m benchmarks --quick`` as the suite's smoke runs of it start it
(tests/test_benchmarks*.py): the same program, except that its ``python`` commands
(``train.py``, ``segexp eval``, ...) fork from a zygote of this process (tests/forkrun.py)
instead of importing torch and Lightning afresh, about 20 times. Quick sizes only: those
figures mean nothing, start-up times included. ``make bench`` and ``make bench-quick`` run
every command in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from benchmarks import harness
from benchmarks.__main__ import main
from tests import forkrun
from tests.conftest import run_script


def forked(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``harness.run_command``, through run_script where the command is ``python ...``."""
    if args and args[0] == sys.executable and set(kwargs) <= {"timeout"}:
        timeout = kwargs.get("timeout") or 1800
        return run_script(*args[1:], cwd=harness.REPO, env=env, timeout=timeout)
    return harness.run_command(args, env, **kwargs)


if __name__ == "__main__":
    if "--quick" not in sys.argv:
        sys.exit("tests/quick_bench.py runs the quick sizes only: add --quick")
    forkrun.start_zygote()  # before any figure runs torch: a fork must start clean
    harness.RUN = forked
    sys.exit(main(sys.argv[1:]))
