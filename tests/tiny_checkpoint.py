"""Test helpers for evaluation and inference: a folder dataset and an untrained checkpoint.

Writing the checkpoint dict directly (as Lightning does) skips a training run, so the
tests of evaluate.py, predict.py and segexp.infer.export take seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

IGNORE = 255


def write_folder_dataset(
    root: Path, num_images: int = 3, size=(40, 56), labels=(0, 1, 2), seed: int = 0
) -> Path:
    """root/images/test/*.png + root/masks/test/*.png with random labels and ~15% ignored pixels."""
    rng = np.random.default_rng(seed)
    for split in ("test", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index in range(num_images):
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            mask = rng.choice(np.array(labels, dtype=np.uint8), size=size)
            mask[rng.random(size) < 0.15] = IGNORE
            Image.fromarray(image).save(root / "images" / split / f"{index:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{index:03d}.png")
    return root


def write_checkpoint(
    path: Path, compose_cfg, num_classes: int = 4, never_predict=(), seed: int = 0
) -> Path:
    """An untrained U-Net-R18 checkpoint in train.py's format; classes in ``never_predict`` get
    a -1e4 output bias so they are never the argmax (absent from every prediction)."""
    import torch

    from segexp.model.module import SegModule

    torch.manual_seed(seed)
    cfg = compose_cfg(
        [
            "data=folder",
            f"data.root={path.parent}",
            f"data.num_classes={num_classes}",
            "augment=none",
        ]
    )
    module = SegModule(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=None,
        num_classes=num_classes,
        ignore_index=IGNORE,
        class_names=[f"c{i}" for i in range(num_classes)],
        mean=[0.4, 0.5, 0.6],
        std=[0.2, 0.25, 0.3],
    )
    with torch.no_grad():
        head = module.net.net.segmentation_head[0]
        for index in never_predict:
            head.bias[index] = -1e4
    module.eval()
    checkpoint = {
        "hyper_parameters": dict(module.hparams),
        "state_dict": module.state_dict(),
        "run_config": OmegaConf.to_container(cfg, resolve=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def normalise(image: np.ndarray, mean, std):
    """uint8 (H, W, 3) -> (1, 3, H, W) float tensor, as albumentations' Normalize + ToTensorV2."""
    import torch

    array = (image.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(
        std, np.float32
    )
    return torch.from_numpy(array.transpose(2, 0, 1)).unsqueeze(0)


def poisoned_copy(good: Path, path: Path, section: str, key: str, config) -> Path:
    """A copy of the checkpoint ``good`` at ``path`` with ``config`` in ``section[key]``
    (``section`` "data" is the recorded ``run_config.data``)."""
    import torch

    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    parent = checkpoint["run_config"]["data"] if section == "data" else checkpoint[section]
    parent[key] = config
    torch.save(checkpoint, path)
    return path
