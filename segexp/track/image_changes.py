"""Per-image changes between two evaluations: which images got better, which worse.

``segexp compare`` calls this when exactly two of its runs hold ``per_image.csv`` (the
analysis ``segexp eval`` writes): the first one read (the first folder given) is the
baseline. Images are matched by path (by name when a run has no paths); the change is
the other run's image mIoU minus the baseline's. The pictures are the runs' own
``worst/`` drawings of an image, where either analysis kept one.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

PER_IMAGE = "per_image.csv"


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_per_image(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{path (or name): {"name", "path", "mIoU"}} from a run's ``per_image.csv``."""
    with (Path(run_dir) / PER_IMAGE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row.get("path") or row["name"]: {
            "name": row["name"],
            "path": row.get("path") or row["name"],
            "mIoU": _float(row["mIoU"]),
        }
        for row in rows
    }


def worst_pictures(run_dir: Path) -> dict[str, tuple[Path, float]]:
    """{image path: (its worst/ picture, its mIoU)} from a run's ``analysis.json``."""
    summary = Path(run_dir) / "analysis.json"
    if not summary.is_file():
        return {}
    entries = json.loads(summary.read_text()).get("worst") or []
    return {e["path"]: (Path(run_dir) / e["file"], e["mIoU"]) for e in entries}


def image_changes(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Compare two runs (``segexp.track.runs.load_run`` dicts) image by image.

    Returns {"baseline", "other" (run names), "matched", "better", "worse", "rows"}; rows
    (worst change first) hold name, path, base, other, change and pictures: [(run, file,
    mIoU)] of the image in either run's worst images.
    """
    base_rows, other_rows = read_per_image(baseline["dir"]), read_per_image(other["dir"])
    pictures = {
        baseline["run"]: worst_pictures(baseline["dir"]),
        other["run"]: worst_pictures(other["dir"]),
    }
    rows = []
    for key, base in base_rows.items():
        if key not in other_rows:
            continue
        after = other_rows[key]["mIoU"]
        if math.isnan(base["mIoU"]) or math.isnan(after):
            continue
        shown = [
            (run, *found[base["path"]]) for run, found in pictures.items() if base["path"] in found
        ]
        rows.append(
            {
                "name": base["name"],
                "path": base["path"],
                "base": base["mIoU"],
                "other": after,
                "change": after - base["mIoU"],
                "pictures": shown,
            }
        )
    rows.sort(key=lambda r: (r["change"], r["path"]))
    return {
        "baseline": baseline["run"],
        "other": other["run"],
        "matched": len(rows),
        "better": sum(r["change"] > 0 for r in rows),
        "worse": sum(r["change"] < 0 for r in rows),
        "rows": rows,
    }


def write_changes_csv(path: Path, changes: dict[str, Any]) -> Path:
    """``image_changes.csv``: one row per matched image, worst change first."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        runs = [f"mIoU {changes['baseline']}", f"mIoU {changes['other']}"]
        writer.writerow(["name", "path", *runs, "change"])
        for r in changes["rows"]:
            writer.writerow(
                [r["name"], r["path"], repr(r["base"]), repr(r["other"]), repr(r["change"])]
            )
    return Path(path)


def changes_markdown(changes: dict[str, Any], top: int = 5) -> str:
    """The most improved and most worsened images as text."""
    lines = [
        f"Per-image mIoU, {changes['other']} vs {changes['baseline']} ({changes['matched']} "
        f"images): {changes['better']} better, {changes['worse']} worse"
    ]
    for label, rows in (("better", changes["rows"][::-1]), ("worse", changes["rows"])):
        chosen = [r for r in rows if r["change"] and (r["change"] > 0) == (label == "better")]
        for r in chosen[:top]:
            lines.append(
                f"  {label}: {r['path']}  {r['base']:.4f} -> {r['other']:.4f} ({r['change']:+.4f})"
            )
    return "\n".join(lines)
