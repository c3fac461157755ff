"""Scan a whole dataset and report every problem, class frequencies and suggested weights.

    python -m segexp.check data=voc data.root=/data/VOCdevkit/VOC2012
    python -m segexp.check data=folder data.root=/my/data --json report.json

``segexp.check`` is the Hydra entry (conf/check.yaml: the same data/augment/paths groups
as train.py); this module does the work. Every image and mask is read (with a progress
bar) and goes through the mask scanner training uses (``segexp.data.scan``). Problems
found: unreadable images or masks, missing masks, RGB (colour-coded) masks, image/mask
size mismatches, labels outside 0..num_classes-1 other than ignore_index, missing or
empty splits, a class count that disagrees with the dataset. Each kind of problem gets
one fix hint. Exits 1 when there is any error, 0 otherwise (warnings alone do not fail).

Without ``data.num_classes`` on a dataset that does not define its classes (a folder
without classes.txt), it lists the label values found in the masks and exits 1 with
the one-line advice.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexp.configs import CONF_DIR
from segexp.data.class_weights import median_frequency_weights
from segexp.data.classes import ClassesError, dataset_spec, resolve_num_classes
from segexp.data.datasets.base import DataError, exif_orientation
from segexp.data.scan import FIX_HINTS, LabelCounts, check_arrays

STAGES = ("train", "val", "test")


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # kind of error -> how many
    found_splits: list[str] | None = None  # the splits on disk (None: the format cannot tell)
    notices: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # split read -> samples
    counts: dict[str, list[int]] = field(default_factory=dict)  # split -> pixels per class
    ignored: dict[str, int] = field(default_factory=dict)  # split -> ignore_index pixels
    labels: dict[int, int] = field(default_factory=dict)  # every label value found -> pixels
    weights: list[float] | None = None
    num_classes: int | None = None

    def error(self, message: str, kind: str = "other") -> None:
        self.errors.append(str(message))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def compose(overrides: list[str]):
    """conf/check.yaml with these overrides, outside a Hydra app (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="check", overrides=overrides)


def _progress(iterable, total: int, description: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the training stack
        return iterable
    return tqdm(
        iterable, total=total, desc=description, unit="sample", disable=None, file=sys.stderr
    )


def check_split(
    dataset, num_classes: int | None, ignore_index: int, report: Report, split: str
) -> None:
    """Read every sample of one split; record each problem; count labels."""
    for message, kind in zip(dataset.problems, dataset.problem_kinds, strict=True):
        report.error(message, kind)  # layout problems, e.g. missing masks
    stats = LabelCounts(num_classes, ignore_index)
    rotated: list[str] = []
    for index in _progress(range(len(dataset)), len(dataset), f"check {split}"):
        image_path, mask_path = dataset.samples[index][:2]
        if (orientation := exif_orientation(Path(image_path))) != 1:
            rotated.append(f"{image_path} (Orientation={orientation})")
        image = mask = None
        try:
            image = dataset.load_image(index)
        except DataError as error:
            report.error(str(error), error.kind)
        try:
            mask = dataset.load_mask(index)
        except DataError as error:
            report.error(str(error), error.kind)
        if mask is None:
            continue
        problems = check_arrays(image, mask, image_path, mask_path, num_classes, ignore_index)
        for problem in problems:
            report.error(problem.message, problem.kind)
        if problems and problems[0].kind == "rgb mask":
            continue
        histogram = stats.add(mask)
        if list(histogram) == [ignore_index]:
            report.warnings.append(
                f"mask {mask_path} is all ignore_index: the sample teaches nothing."
            )
    if rotated:
        report.warnings.append(
            f"{len(rotated)} image(s) in split {split} carry a non-identity EXIF orientation, "
            f"e.g. {'; '.join(rotated[:3])}: segexp applies it when reading (as viewers do), "
            "so their masks must match the image as displayed (the size check above used it)."
        )
    for value, pixels in stats.values.items():
        report.labels[value] = report.labels.get(value, 0) + pixels
    if num_classes is None:
        return
    report.counts[split] = stats.counts.tolist()
    report.ignored[split] = stats.ignored
    if split == "train":
        report.weights = median_frequency_weights(stats.counts, stats.image_pixels)


def _splits_to_read(data, found: list[str] | None, report: Report) -> dict[str, str]:
    splits = {}
    for stage in STAGES:
        split = data.get(f"{stage}_split", stage)
        if split is None and stage == "test":
            if found is None or "test" in found:
                split = "test"
            else:
                split = data.get("val_split") or "val"
                report.notices.append(
                    f"no 'test' split: training tests on '{split}' (data.test_split: null); "
                    "set data.test_split to choose."
                )
        splits[stage] = split
    return splits


def run_check(cfg) -> tuple[Report, list[str]]:
    """Check the dataset ``cfg.data`` describes. Returns the report and the class names."""
    from hydra.utils import instantiate

    data = cfg.data
    ignore_index = int(data.ignore_index)
    report = Report()
    if data.get("generate") is not None:
        instantiate(data.generate)()
    unknown_classes = None
    try:
        resolve_num_classes(data)
    except (ClassesError, DataError) as error:  # e.g. a name repeated in classes.txt
        if data.get("num_classes") is None:
            unknown_classes = str(error)  # scan anyway: the label values tell the number
        else:
            report.error(str(error), "class names")
    num_classes = int(data.num_classes) if data.get("num_classes") is not None else None
    report.num_classes = num_classes
    dataset_class, kwargs = dataset_spec(data)
    finder = getattr(dataset_class, "find_splits", None)
    report.found_splits = finder(**kwargs) if finder is not None else None
    factory = instantiate(data.dataset)
    names = list(data.class_names) if data.get("class_names") is not None else None
    for stage, split in _splits_to_read(data, report.found_splits, report).items():
        if split in report.splits:  # e.g. VOC's test split is its val split
            continue
        try:
            dataset = factory(split=split, transform=None, strict=False)
        except DataError as error:
            kind = "missing split" if error.kind == "other" else error.kind
            report.error(f"split '{split}' (data.{stage}_split): {error}", kind)
            continue
        report.splits[split] = len(dataset)
        names = names or dataset.class_names
        if len(dataset) == 0 and not dataset.problems:
            report.error(
                f"split '{split}' (data.{stage}_split) is empty: add samples or point "
                f"data.{stage}_split at a split that has them.",
                "empty split",
            )
        check_split(
            dataset, num_classes, ignore_index, report, "train" if stage == "train" else split
        )
    if unknown_classes is not None:
        report.error(unknown_classes, "no classes")
        return report, []
    names = names or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes and "class names" not in report.kinds:
        report.error(
            f"data.num_classes={num_classes} but there are {len(names)} class names "
            f"({names[:5]}...); make them agree (data.num_classes, data.class_names or "
            "classes.txt).",
            "class names",
        )
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    if "train" in report.counts:
        for label, count in enumerate(report.counts["train"]):
            if count == 0:
                report.warnings.append(
                    f"class {label} ({names[label]}) never appears in the train split."
                )
    return report, names


def _label_summary(report: Report, ignore_index: int) -> list[str]:
    values = sorted(report.labels)
    shown = ", ".join(f"{v} (ignore_index)" if v == ignore_index else str(v) for v in values[:50])
    lines = [f"label values found in the masks: {shown}{' ...' if len(values) > 50 else ''}"]
    labels = [v for v in values if v != ignore_index and v >= 0]
    if labels:
        lines.append(
            f"  {len(labels)} label value(s), the highest {labels[-1]}: "
            f"data.num_classes={labels[-1] + 1} if classes are numbered from 0 without gaps."
        )
    return lines


def format_report(report: Report, names: list[str], cfg) -> str:
    data = cfg.data
    lines = [f"segexp.check: root={data.get('root')} num_classes={report.num_classes} "
             f"ignore_index={data.ignore_index}"]  # fmt: skip
    if report.found_splits is not None:
        lines.append(f"splits found: {', '.join(report.found_splits) or 'none'}")
    lines += [f"  split {split}: {count} samples" for split, count in report.splits.items()]
    lines += [f"note: {notice}" for notice in report.notices]
    if report.num_classes is None:
        lines += _label_summary(report, int(data.ignore_index))
    if "train" in report.counts and names:
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
    hints = [kind for kind in FIX_HINTS if kind in report.kinds and kind != "other"]
    if hints:
        lines.append("HOW TO FIX:")
        lines += [f"  {kind} ({report.kinds[kind]}): {FIX_HINTS[kind]}" for kind in hints]
    lines.append(f"result: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def report_json(report: Report, names: list[str]) -> dict[str, Any]:
    out = asdict(report)
    out["labels"] = {str(k): v for k, v in report.labels.items()}
    out["kinds"] = dict(Counter(report.kinds))
    return {**out, "class_names": names}


def check(cfg) -> int:
    """Scan, print the report (and write ``cfg.json``); 1 when there are errors, else 0."""
    report, names = run_check(cfg)
    print(format_report(report, names, cfg), flush=True)
    if cfg.get("json"):
        path = Path(cfg.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report_json(report, names), indent=1))
    if report.num_classes is None and report.errors:
        print(f"error: {report.errors[-1]}", file=sys.stderr, flush=True)
    return 1 if report.errors else 0
