"""``segexp browse``: a PNG grid of augmented samples with their masks overlaid.

    segexp browse data=voc data.root=/data/VOCdevkit/VOC2012 augment=strong
    segexp browse augment=strong num=16 split=val out=grid.png
    segexp browse --cfg job          # the composed config (browse.yaml)

A Hydra app: the grid lands in the run folder (outputs/browse/<date>/<time>/) unless
``out=`` says where. The older flags ``--num N --split S --seed K --out FILE`` still work;
they become the keys ``num=``, ``split=``, ``seed=`` and ``out=``. The drawing itself is
``segexp.data.browse``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="browse")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes
    from segexp.data.browse import browse
    from segexp.run.job import hydra_context

    with exit_codes():
        choices = (hydra_context() or {}).get("choices", {})
        name = f"{choices.get('data', 'data')}-{choices.get('augment', 'augment')}"
        path, count, split = browse(cfg, default_name=name)
        print(f"wrote {path} ({count} samples, split {split})")


def main() -> None:
    """Run ``segexp browse`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.argv import translate_legacy_flags
    from segexp.cli.errors import hydra_command

    sys.argv = [sys.argv[0], *translate_legacy_flags(sys.argv[1:])]
    hydra_command(hydra_main)
