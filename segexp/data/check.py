"""Scan a whole dataset and report every problem, class frequencies and suggested weights.

    python -m segexp.check data=voc data.root=/data/VOCdevkit/VOC2012
    python -m segexp.check data=folder data.root=/my/data data.num_classes=4 --json report.json

The config is composed from conf/ exactly as train.py composes it (same overrides).
Problems found: unreadable images or masks, missing masks, RGB (colour-coded) masks,
image/mask size mismatches, labels outside 0..num_classes-1 other than ignore_index,
missing or empty splits, class names that do not match num_classes. Exits 1 when
there is any error, 0 otherwise (warnings alone do not fail).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segexp.data.class_weights import median_frequency_weights
from segexp.data.datasets.base import DataError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
STAGES = ("train", "val", "test")


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)  # split -> pixels per class
    ignored: dict[str, int] = field(default_factory=dict)  # split -> ignore_index pixels
    weights: list[float] | None = None


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def check_split(dataset, num_classes: int, ignore_index: int, report: Report, split: str) -> None:
    """Read every sample of one split; record each problem; count labels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    report.errors.extend(dataset.problems)  # layout problems, e.g. missing masks
    for index in range(len(dataset)):
        image_path, mask_path = dataset.samples[index][:2]
        image = mask = None
        try:
            image = dataset.load_image(index)
        except DataError as error:
            report.errors.append(str(error))
        try:
            mask = dataset.load_mask(index)
        except DataError as error:
            report.errors.append(str(error))
        if mask is None:
            continue
        if image is not None and image.shape[:2] != mask.shape[:2]:
            report.errors.append(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]} (width x height); re-export the mask at the image's size."
            )
        labels, pixels = np.unique(mask, return_counts=True)
        bad = [int(v) for v in labels if (v < 0 or v >= num_classes) and v != ignore_index]
        if bad:
            report.errors.append(
                f"mask {mask_path} contains label(s) {bad[:10]} but data.num_classes={num_classes} "
                f"(valid: 0..{num_classes - 1} or ignore_index={ignore_index}); fix data.num_classes, "
                "data.ignore_index or the mask."
            )
        for value, count in zip(labels.tolist(), pixels.tolist(), strict=True):
            if 0 <= value < num_classes:
                counts[value] += count
                image_pixels[value] += mask.size
            elif value == ignore_index:
                ignored += count
        if labels.tolist() == [ignore_index]:
            report.warnings.append(
                f"mask {mask_path} is all ignore_index: the sample teaches nothing."
            )
    report.counts[split] = counts.tolist()
    report.ignored[split] = ignored
    if split == "train":
        report.weights = median_frequency_weights(counts, image_pixels)


def run_check(cfg) -> tuple[Report, list[str]]:
    """Check the dataset ``cfg.data`` describes. Returns the report and the class names."""
    from hydra.utils import instantiate

    data = cfg.data
    num_classes, ignore_index = int(data.num_classes), int(data.ignore_index)
    report = Report()
    if data.get("generate") is not None:
        instantiate(data.generate)()
    factory = instantiate(data.dataset)
    splits = {stage: data.get(f"{stage}_split", stage) for stage in STAGES}
    names = list(data.class_names) if data.get("class_names") is not None else None
    for stage, split in splits.items():
        if split in report.splits:  # e.g. VOC's test split is its val split
            continue
        try:
            dataset = factory(split=split, transform=None, strict=False)
        except DataError as error:
            report.errors.append(f"split '{split}' (data.{stage}_split): {error}")
            continue
        report.splits[split] = len(dataset)
        names = names or dataset.class_names
        if len(dataset) == 0 and not dataset.problems:
            report.errors.append(
                f"split '{split}' (data.{stage}_split) is empty: add samples or point "
                f"data.{stage}_split at a split that has them."
            )
        check_split(
            dataset, num_classes, ignore_index, report, "train" if stage == "train" else split
        )
    names = names or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        report.errors.append(
            f"data.num_classes={num_classes} but there are {len(names)} class names ({names[:5]}...); "
            "make them agree (data.num_classes, data.class_names or classes.txt)."
        )
        names = [f"class_{i}" for i in range(num_classes)]
    if "train" in report.counts:
        for label, count in enumerate(report.counts["train"]):
            if count == 0:
                report.warnings.append(
                    f"class {label} ({names[label]}) never appears in the train split."
                )
    return report, names


def format_report(report: Report, names: list[str], cfg) -> str:
    lines = [f"segexp.data.check: root={cfg.data.get('root')} num_classes={cfg.data.num_classes} "
             f"ignore_index={cfg.data.ignore_index}"]  # fmt: skip
    lines += [f"  split {split}: {count} samples" for split, count in report.splits.items()]
    if "train" in report.counts:
        counts = np.asarray(report.counts["train"], dtype=np.int64)
        total = max(int(counts.sum()), 1)
        lines.append(
            f"class pixel frequencies (train split: {int(counts.sum())} labelled pixels, "
            f"{report.ignored['train']} ignored):"
        )
        lines.append(f"  {'id':>3}  {'class':<20} {'pixels':>12} {'freq':>8} {'weight':>8}")
        for label, name in enumerate(names):
            lines.append(
                f"  {label:>3}  {name[:20]:<20} {int(counts[label]):>12} "
                f"{counts[label] / total:>8.4f} {report.weights[label]:>8.3f}"
            )
        weights = ",".join(f"{w:.4g}" for w in report.weights)
        lines.append("suggested class weights (median frequency balancing), for the CE loss:")
        lines.append(
            f"  loss.weight=auto   (computed and cached at train time), or loss.weight=[{weights}]"
        )
    for title, items in (("WARNINGS", report.warnings), ("ERRORS", report.errors)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  - {item}" for item in items]
    lines.append(f"result: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segexp.check",
        description="Scan a dataset (composed from conf/ like train.py) and report every problem.",
        epilog="Other arguments are Hydra overrides, e.g. data=voc data.root=/data/VOC2012.",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args, overrides = parser.parse_known_args(argv)
    cfg = compose(overrides)
    report, names = run_check(cfg)
    print(format_report(report, names, cfg))
    if args.json:
        args.json.write_text(json.dumps({**report.__dict__, "class_names": names}, indent=1))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
