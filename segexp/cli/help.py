"""A faster ``--help`` for the Hydra scripts (train.py, evaluate.py, predict.py).

Hydra 1.3's help lists the config groups twice (app groups, then Hydra's own), and each
listing asks the config loader for the options of every group (~130 with the launcher
and sweeper plugins), building a fresh config repository each time. Those answers
cannot change within one ``--help``, so remembering them gives the same text faster
(docs/benchmarks.md, figure 4). Training runs are not touched.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

HELP_FLAGS = ("--help", "-h", "--hydra-help")


def speed_up_help(argv: Sequence[str] | None = None) -> bool:
    """Memoise Hydra's group-option lookups when ``argv`` asks for help; True if it did."""
    argv = sys.argv if argv is None else argv
    if not any(arg in HELP_FLAGS for arg in argv[1:]):
        return False
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
    except ImportError:  # another Hydra layout: plain (slower) help
        return False
    original = ConfigLoaderImpl.get_group_options
    answers: dict = {}

    def get_group_options(self, *args, **kwargs):
        key = (id(self), repr(args), repr(sorted(kwargs.items())))
        if key not in answers:
            answers[key] = original(self, *args, **kwargs)  # Hydra's own defaults apply
        return list(answers[key])

    ConfigLoaderImpl.get_group_options = get_group_options
    return True
