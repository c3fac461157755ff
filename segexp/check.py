"""Scan a dataset before training: every image and mask, every problem, class frequencies.

    python -m segexp.check data=voc data.root=/data/VOCdevkit/VOC2012
    python -m segexp.check data=folder data.root=/my/data --json report.json
    python -m segexp.check --help        # Hydra's help; --cfg job prints the config

A Hydra app on conf/check.yaml (the data, augment and paths groups of train.py). The
work is in ``segexp.data.check``. Exit codes: 0 clean, 1 the dataset has errors,
2 a user error (a bad config value, a folder that does not exist).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="check")
def main(cfg: DictConfig) -> None:
    from segexp.data.check import check
    from segexp.run.errors import exit_codes

    with exit_codes():
        code = check(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from segexp.data.check import translate_argv
    from segexp.run.entry import hydra_entry

    sys.argv = [sys.argv[0], *translate_argv(sys.argv[1:])]
    hydra_entry(main)  # Hydra's own config errors exit 2 too
