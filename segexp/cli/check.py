"""``segexp check``: scan a dataset before training (every image and mask, every problem).

    segexp check data=voc data.root=/data/VOCdevkit/VOC2012
    segexp check data=folder data.root=/my/data json=report.json   # (or --json report.json)
    segexp check --help        # Hydra's help; --cfg job prints the config

A Hydra app on ``check.yaml`` (the data, augment and paths groups of ``segexp train``). The
work is ``segexp.data.check``. Exit codes: 0 clean, 1 the dataset has errors, 2 a user
error (a bad config value, a folder that does not exist).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="check")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes
    from segexp.data.check import check

    with exit_codes():
        code = check(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    """Run ``segexp check`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.argv import translate_check_flags
    from segexp.cli.errors import hydra_command

    sys.argv = [sys.argv[0], *translate_check_flags(sys.argv[1:])]
    hydra_command(hydra_main)
