"""Predict segmentation masks for new images with a trained checkpoint (``segexp predict``).

Writes masks/<name>.png (palette PNG: pixel value = class id), overlays/<name>.png and,
with save_probs=true, probs/<name>.npy ((C, H, W) float16). Files that cannot be read are
reported by name; the others are still processed.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from omegaconf import DictConfig

from segexp.errors import UserError


class InputError(UserError):
    """``input=...`` names nothing to predict on, or ``palette=...`` does not fit the classes."""


def collect_inputs(pattern: str) -> list[Path]:
    """The files named by ``input``: one file, a folder's files (not sub-folders), or a glob."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    else:
        raise InputError(
            f"input={pattern} does not exist; give an image file, a folder or a quoted glob"
        )
    if not files:
        raise InputError(f"input={pattern} matches no files")
    return files


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names: the file stem, made unique when two inputs share one (a.png, a.jpg)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return names


def predict(cfg: DictConfig) -> dict:
    """Run the checkpoint on every input; return {"written": [...], "failed": {path: reason}}."""
    from segexp.run.checkpoint import load_module, trusted_packages

    # The inputs and the checkpoint first: a wrong path or a refused file is reported before
    # the model's imports (seconds).
    files = collect_inputs(str(cfg.input))
    model = load_module(cfg.ckpt_path, trust=trusted_packages(cfg))
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from tqdm import tqdm

    from segexp.data.datasets.base import DataError, read_image
    from segexp.data.viz import palette as default_palette
    from segexp.infer.postprocess import build_postprocess

    out_dir = Path(cfg.output) if cfg.output else Path(cfg.paths.output_dir) / "predictions"
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.device == "auto"
        else str(cfg.device)
    )
    model = model.to(device).eval()
    num_classes = int(model.hparams.num_classes)
    mean = torch.tensor(model.hparams.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.hparams.std, device=device).view(1, 3, 1, 1)
    postprocess = build_postprocess(cfg)  # a CRF without tuned settings: refused
    inference = instantiate(cfg.inference, postprocess=postprocess)

    palette = np.array(cfg.palette, dtype=np.uint8) if cfg.palette else default_palette(num_classes)
    if palette.shape != (num_classes, 3):
        raise InputError(
            f"palette has shape {palette.shape}; give {num_classes} [r, g, b] colours (or null)"
        )
    for folder in ("masks", "overlays", "probs"):
        if cfg.get(f"save_{folder}"):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)

    names = unique_stems(files)
    failed: dict[str, str] = {}
    written: list[str] = []
    bar = tqdm(total=len(files), unit="img", disable=not cfg.progress, file=sys.stdout)
    for start in range(0, len(files), cfg.batch_size):
        chunk = list(
            zip(files[start : start + cfg.batch_size], names[start : start + cfg.batch_size])
        )
        images: dict[str, tuple[np.ndarray, Path]] = {}
        for path, name in chunk:
            try:
                too_big = oversized(path, cfg.get("max_pixels"))
                if too_big:
                    failed[str(path)] = too_big
                    continue
                images[name] = (read_image(path), path)
            except DataError as error:
                failed[str(path)] = str(error).split(": ", 1)[-1]
            except Exception as error:  # PIL raises more than OSError (e.g. decompression bombs)
                failed[str(path)] = f"cannot read image ({type(error).__name__}: {error})"
        # Only same-sized images can share a batch; sizes may differ from file to file.
        by_size: dict[tuple[int, int], list[str]] = {}
        for name, (image, _) in images.items():
            by_size.setdefault(image.shape[:2], []).append(name)
        for group in by_size.values():
            pixels = np.stack([images[name][0] for name in group])  # (B, H, W, 3) uint8
            batch = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float() / 255.0
            batch = (batch - mean) / std
            try:
                probs = inference.probs(model, batch, model.hparams.mean, model.hparams.std)
            except (MemoryError, RuntimeError) as error:  # CUDA's OutOfMemoryError included
                text = str(error).lower()
                if isinstance(error, RuntimeError) and "memory" not in text and "alloc" not in text:
                    raise
                for name in group:  # only these files fail
                    failed[str(images[name][1])] = (
                        f"out of memory at {pixels.shape[2]}x{pixels.shape[1]} "
                        f"({type(error).__name__}); lower max_pixels or batch_size"
                    )
                continue
            labels = probs.argmax(dim=1).cpu().numpy()  # (B, C, H, W) -> (B, H, W)
            probs_np = probs.cpu().numpy() if cfg.save_probs else None
            for index, name in enumerate(group):
                probs_one = probs_np[index] if probs_np is not None else None
                write_outputs(cfg, out_dir, name, pixels[index], labels[index], palette, probs_one)
                written.append(name)
        bar.update(len(chunk))
    bar.close()

    print(
        f"\n{len(written)} of {len(files)} images predicted on {device}; outputs in {out_dir.resolve()}"
    )
    if failed:
        print(f"{len(failed)} file(s) failed:", file=sys.stderr)
        for path, reason in failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)
    return {"written": written, "failed": failed, "output": out_dir}


def oversized(path: Path, max_pixels) -> str | None:
    """Why ``path`` is over ``max_pixels`` (read from its header, before decoding), or None."""
    if max_pixels is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # the header only: no pixels decoded
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None  # read_image reports unreadable files with its own message
    if width * height <= int(max_pixels):
        return None
    return (
        f"{width}x{height} = {width * height / 1e6:.1f} MP is over max_pixels={int(max_pixels)} "
        "(memory grows with pixels x classes); resize it, or raise max_pixels=N (null: no limit)"
    )


def write_outputs(cfg, out_dir: Path, name: str, image, labels, palette, probs=None) -> None:
    """masks/<name>.png (palette PNG of class ids), overlays/<name>.png, probs/<name>.npy."""
    import numpy as np
    from PIL import Image

    from segexp.data.viz import overlay

    if cfg.save_masks:
        if len(palette) <= 256:
            mask = Image.fromarray(labels.astype(np.uint8), mode="L")
            mask.putpalette(palette.reshape(-1).tolist())  # L -> P: values stay the class ids
        else:  # a palette holds 256 colours; more classes need 16-bit ids
            mask = Image.fromarray(labels.astype(np.uint16))
        mask.save(out_dir / "masks" / f"{name}.png")
    if cfg.save_overlays:
        blended = overlay(image, labels, palette, float(cfg.overlay_alpha))
        Image.fromarray(blended).save(out_dir / "overlays" / f"{name}.png")
    if cfg.save_probs and probs is not None:
        np.save(out_dir / "probs" / f"{name}.npy", probs.astype(np.float16))
