"""``segexp train``: train a segmentation model from Hydra config groups.

    segexp train                                   # the default experiment
    segexp train model=deeplabv3plus loss=ce_dice  # pick options per group
    segexp train -m model=unet,fpn                 # a multirun sweep
    segexp train --help                            # groups and options (no torch import)
    segexp train reproduce=outputs/<date>/<time>   # re-run a saved config in a new folder
    segexp train resume=outputs/<date>/<time>      # continue a killed run from its checkpoint

The lifecycle is ``segexp.run.lifecycle.train``; this is its command line.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from segexp.cli.errors import exit_codes
    from segexp.run.distributed import distributed_job  # DDP in multiruns, SLURM requeue
    from segexp.run.lifecycle import train
    from segexp.run.reproduce import prepare_config
    from segexp.track.sweeps import run_job

    with exit_codes():  # signals and user errors: a message and a non-zero exit code
        cfg = prepare_config(cfg)
        with distributed_job(cfg):
            # The optimized metric, or None for a failed/NaN job (a sweep records it and goes on).
            return run_job(train, cfg)


def main() -> None:
    """Run ``segexp train`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.argv import rewrite_argv
    from segexp.cli.errors import fail, hydra_command
    from segexp.run.reproduce import ReproduceError

    try:  # reproduce=/resume= become Hydra arguments before Hydra parses them
        sys.argv = rewrite_argv(sys.argv)
    except ReproduceError as error:
        fail(str(error))
    hydra_command(hydra_main)
