"""``segexp export``: a checkpoint's network as ONNX or TorchScript, parity checked.

    segexp export ckpt_path=.../checkpoints/last.ckpt              # ONNX
    segexp export ckpt_path=... format=torchscript output=model.pt

The export and its parity check are ``segexp.infer.export``; this is its command line.
Exit codes: 0 written and checked, 1 written but the parity check failed, 2 a user error.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segexp.configs import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    from segexp.cli.errors import exit_codes, fail
    from segexp.infer.export import ParityError, export

    with exit_codes():
        try:
            export(cfg)
        except ParityError as error:  # the export was written but disagrees: exit 1, as documented
            fail(str(error), code=1)


def main() -> None:
    """Run ``segexp export`` with the arguments in ``sys.argv[1:]``."""
    from segexp.cli.errors import hydra_command

    hydra_command(hydra_main)
