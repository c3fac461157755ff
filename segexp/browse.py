"""``python -m segexp.browse``: a PNG grid of augmented samples with their masks overlaid.

    python -m segexp.browse data=voc data.root=/data/VOCdevkit/VOC2012 augment=strong
    python -m segexp.browse augment=strong num=16 split=val out=grid.png
    python -m segexp.browse --cfg job          # the composed config (conf/browse.yaml)

A Hydra app: the grid lands in the run folder (outputs/browse/<date>/<time>/) unless
``out=`` says where. The older flags ``--num N --split S --seed K --out FILE`` still
work; they become the keys ``num=``, ``split=``, ``seed=`` and ``out=``. The drawing
itself is ``segexp.data.browse``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
LEGACY_FLAGS = ("--num", "--split", "--seed", "--out")
_PLAIN_VALUE = re.compile(r"[\w./\-+:@%~]+")


def _override_value(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else single-quoted."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def translate_legacy_flags(argv: Sequence[str]) -> list[str]:
    """``--num 16 --out=grid.png`` -> ``num=16 out=grid.png``; every other argument as is."""
    from segexp.run.errors import fail

    args, out, index = list(argv), [], 0
    while index < len(args):
        arg = args[index]
        flag, has_value, value = arg.partition("=")
        if flag in LEGACY_FLAGS:
            if not has_value:
                if index + 1 >= len(args):
                    fail(f"{flag} needs a value, e.g. {flag[2:]}=VALUE")
                index += 1
                value = args[index]
            out.append(f"{flag[2:]}={_override_value(value)}")
        else:
            out.append(arg)
        index += 1
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="browse")
def main(cfg: DictConfig) -> None:
    from segexp.data.browse import browse
    from segexp.run.errors import exit_codes
    from segexp.run.job import hydra_context

    with exit_codes():
        choices = (hydra_context() or {}).get("choices", {})
        name = f"{choices.get('data', 'data')}-{choices.get('augment', 'augment')}"
        path, count, split = browse(cfg, default_name=name)
        print(f"wrote {path} ({count} samples, split {split})")


if __name__ == "__main__":
    from segexp.run.entry import hydra_entry
    from segexp.run.hydra_help import speed_up_help

    sys.argv = [sys.argv[0], *translate_legacy_flags(sys.argv[1:])]
    speed_up_help()
    hydra_entry(main)  # Hydra's own config errors exit 2 too
