"""``python -m segexp.tune_crf``: choose dense CRF settings on the validation split.

    python -m segexp.tune_crf ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python -m segexp.tune_crf ckpt_path=... data=folder data.root=/my/data max_images=50
    python evaluate.py ckpt_path=... postprocess=crf postprocess.params=<run folder>/crf_params.yaml

The logic is ``segexp.infer.tune_crf``; this is its command line.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tune_crf")
def main(cfg: DictConfig) -> None:
    from segexp.infer.tune_crf import tune_crf
    from segexp.run.errors import exit_codes

    with exit_codes():  # user errors (config, data, checkpoint): one line and exit 2
        tune_crf(cfg)


if __name__ == "__main__":
    from segexp.run.entry import hydra_entry
    from segexp.run.hydra_help import speed_up_help

    speed_up_help()
    hydra_entry(main)  # Hydra's own config errors exit 2 too
