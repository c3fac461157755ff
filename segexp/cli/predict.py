"""``segexp predict``: masks for new images from a trained checkpoint.

    segexp predict ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt input=photos/ output=preds/
    segexp predict ckpt_path=... input='photos/*.jpg' save_probs=true
    segexp predict ckpt_path=... input=big.png inference=slide inference.crop_size=128

Writes masks/<name>.png (palette PNG: pixel value = class id), overlays/<name>.png and,
with save_probs=true, probs/<name>.npy. Files that cannot be read are reported by name;
the others are still processed, and the exit code is 1 if anything failed. The work is
``segexp.infer.predict``; this is its command line.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes
    from segexp.infer.predict import predict

    with exit_codes():  # user errors: one line and exit 2
        result = predict(cfg)
    if result["failed"]:
        sys.exit(1)


def main() -> None:
    """Run ``segexp predict`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.errors import hydra_command

    hydra_command(hydra_main)
