"""``segexp eval``: evaluate a checkpoint on a dataset split (mIoU, accuracies, per-class scores).

    segexp eval ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    segexp eval ckpt_path=... split=val
    segexp eval ckpt_path=... data=folder data.root=/my/data
    segexp eval ckpt_path=... inference=slide inference.crop_size=128
    segexp eval ckpt_path=... inference=tta postprocess=crf postprocess.params=<tune-crf run>/crf_params.yaml
    segexp eval ckpt_path=... analysis.worst_k=16   # the analysis: per_image.csv, worst.png, analysis.html

The work is ``segexp.infer.evaluate``; this is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes
    from segexp.infer.evaluate import evaluate

    with exit_codes():  # user errors (config, data, checkpoint): one line and exit 2
        evaluate(cfg)


def main() -> None:
    """Run ``segexp eval`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.errors import hydra_command

    hydra_command(hydra_main)
