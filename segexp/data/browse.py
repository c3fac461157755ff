"""Look at augmented samples before training: a PNG grid of images and their masks overlaid.

    python -m segexp.browse data=voc data.root=/data/VOC2012 augment=strong augment.crop_size=320
    python -m segexp.browse augment=strong --num 16 --out grid.png --split val

Each cell shows the augmented image and, beside it, the mask blended on it in the
VOC colour map; ignore_index pixels are white. The config is composed from conf/
like train.py's, so what you see is what training gets (before normalisation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segexp.data.check import compose


def class_colours() -> np.ndarray:
    """The VOC colour map: 256 distinct RGB colours, class 0 black. (256, 3) uint8"""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        colours[index] = rgb
    return colours


def overlay(
    image: np.ndarray, mask: np.ndarray, ignore_index: int, alpha: float = 0.55
) -> np.ndarray:
    """Blend class colours onto the image; ignore_index pixels white. (H, W, 3) uint8"""
    colours = class_colours()[np.clip(mask, 0, 255).astype(np.int64)].astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours
    out[mask == ignore_index] = 255
    return out.astype(np.uint8)


def fit_tile(array: np.ndarray, tile: int, resample) -> Image.Image:
    """Scale to fit a tile x tile square (aspect kept), on a grey background."""
    image = Image.fromarray(array)
    scale = tile / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample
    )
    canvas = Image.new("RGB", (tile, tile), (128, 128, 128))
    canvas.paste(image, (0, 0))
    return canvas


def render_grid(samples, ignore_index: int, tile: int = 192, columns: int = 4) -> Image.Image:
    """``samples``: (name, image (H, W, 3) uint8, mask (H, W)) -> the grid image."""
    rows = -(-len(samples) // columns)
    grid = Image.new("RGB", (columns * 2 * tile, rows * (tile + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (name, image, mask) in enumerate(samples):
        x, y = (i % columns) * 2 * tile, (i // columns) * (tile + 14)
        grid.paste(fit_tile(image, tile, Image.BILINEAR), (x, y + 14))
        grid.paste(
            fit_tile(overlay(image, mask, ignore_index), tile, Image.NEAREST), (x + tile, y + 14)
        )
        labels = sorted(int(v) for v in np.unique(mask) if v != ignore_index)
        draw.text(
            (x + 2, y + 1),
            f"{name} {image.shape[1]}x{image.shape[0]} labels {labels[:8]}",
            fill=(0, 0, 0),
        )
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segexp.browse",
        description="Write a PNG grid of augmented samples with their masks overlaid.",
        epilog="Other arguments are Hydra overrides, e.g. data=voc data.root=... augment=strong.",
    )
    parser.add_argument("--num", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument(
        "--split", default="train", choices=("train", "val", "test"), help="which stage's split"
    )
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed")
    parser.add_argument(
        "--out", type=Path, help="PNG to write (default outputs/browse/<data>-<augment>.png)"
    )
    args, overrides = parser.parse_known_args(argv)

    import albumentations as A
    from hydra.utils import instantiate

    cfg = compose(overrides)
    choice = {
        o.split("=", 1)[0]: o.split("=", 1)[1]
        for o in overrides
        if o.split("=", 1)[0] in ("data", "augment")
    }
    if cfg.data.get("generate") is not None:
        instantiate(cfg.data.generate)()
    dataset = instantiate(cfg.data.dataset)(
        split=cfg.data.get(f"{args.split}_split", args.split), transform=None
    )
    if len(dataset) == 0:
        print(f"split '{dataset.split}' is empty; nothing to show", file=sys.stderr)
        return 1
    transforms = [
        instantiate(t) for t in (cfg.augment.train if args.split == "train" else cfg.augment.val)
    ]
    pipeline = A.Compose(transforms, seed=args.seed)
    samples = []
    for i in range(args.num):
        index = i % len(dataset)
        image, mask = dataset.load(index)
        out = pipeline(image=image, mask=mask)
        samples.append((dataset.name(index), out["image"], np.asarray(out["mask"])))
    grid = render_grid(samples, int(cfg.data.ignore_index))
    path = (
        args.out
        or Path("outputs/browse")
        / f"{choice.get('data', 'shapes')}-{choice.get('augment', 'light')}.png"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    print(f"wrote {path} ({len(samples)} samples, split {dataset.split})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
