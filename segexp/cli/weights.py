"""``segexp weights fetch``: keep pretrained encoder weights for offline machines.

    segexp weights fetch model=unet model.encoder_name=resnet18
    segexp weights fetch model=fpn model.encoder_name=resnet34,mobilenet_v2
    segexp weights fetch model=unet model.encoder_name=resnet50 model.encoder_weights=ssl
    segexp weights fetch model=unet paths.weights_dir=/shared/weights

Run it once on a machine with network: it builds each chosen model with its encoder's
pretrained weights (``model.encoder_weights``, default ``imagenet``) and saves the encoder
as ``<paths.weights_dir>/<encoder_name>.<weights>.safetensors`` (``$SEGEXP_WEIGHTS_DIR``,
default ``weights/``). Copy that folder to the cluster; training with
``model.encoder_weights=...`` reads it first and needs no network. The logic is
``segexp.model.encoder_weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segexp.configs import CONF_DIR


def _split_encoders(overrides: list[str]) -> tuple[list[str], list[str | None]]:
    """Overrides without ``model.encoder_name=a,b``, and the encoder names it lists."""
    rest, names = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "model.encoder_name":
            names += [name.strip() for name in value.split(",") if name.strip()]
        else:
            rest.append(override)
    return rest, names or [None]


def fetch(overrides: list[str]) -> list[Path]:
    """Fetch the encoder weights of the model the ``train.py`` overrides describe."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segexp.model import networks
    from segexp.model.encoder_weights import fetch_encoder_weights

    rest, encoders = _split_encoders(overrides)
    saved = []
    for encoder in encoders:
        extra = [f"model.encoder_name={encoder}"] if encoder else []
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*rest, *extra])
        model = OmegaConf.to_container(cfg.model, resolve=True)
        if model.get("encoder_weights") is None:
            model["encoder_weights"] = "imagenet"
        root = Path(str(cfg.paths.weights_dir))
        path = fetch_encoder_weights(networks.build_network, model, root)
        print(f"saved {path}", flush=True)
        saved.append(path)
    print(
        f"copy {root} to the offline machine and set paths.weights_dir (or $SEGEXP_WEIGHTS_DIR) "
        "to where it lands."
    )
    return saved


def main(argv: list[str] | None = None) -> int:
    """Run ``segexp weights`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    from segexp.cli.errors import exit_codes

    parser = argparse.ArgumentParser(
        prog="segexp weights", description="Keep pretrained encoder weights for offline machines."
    )
    parser.add_argument("command", choices=["fetch"], help="fetch: download and keep weights")
    parser.add_argument(
        "overrides", nargs="*", help="train.py overrides: model=..., model.encoder_name=..."
    )
    args = parser.parse_args(argv)
    with exit_codes():
        fetch(args.overrides)
    return 0
