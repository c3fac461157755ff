"""``segexp tune-crf``: choose dense CRF settings on the validation split.

    segexp tune-crf ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    segexp tune-crf ckpt_path=... data=folder data.root=/my/data max_images=50
    segexp eval ckpt_path=... postprocess=crf postprocess.params=<run folder>/crf_params.yaml

The logic is ``segexp.infer.tune_crf``; this is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tune_crf")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes
    from segexp.infer.tune_crf import tune_crf

    with exit_codes():  # user errors (config, data, checkpoint): one line and exit 2
        tune_crf(cfg)


def main() -> None:
    """Run ``segexp tune-crf`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.errors import hydra_command

    hydra_command(hydra_main)
