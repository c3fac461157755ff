"""Your own data on the first try: the shortest commands train on datasets written here.

Each test writes a dataset the way a user would have it (a folder with only train/ and
val/, a COCO-format export with its own categories, a truncated image, masks without
classes.txt), runs the real entry point in a fresh process and checks what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests import fixtures_data as fixtures
from tests.conftest import TINY, assert_means_of_classes, run_script

# TINY without the generated dataset's keys (data=folder/coco have no data.generate).
FAST = [o for o in TINY if not o.startswith("data.generate.")]


def where(tmp_path: Path) -> list[str]:
    """Where the run writes (not a setting of the experiment)."""
    return [f"paths.data_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]


def saved_config(run: Path) -> dict:
    return yaml.safe_load((run / ".hydra" / "config.yaml").read_text())


@pytest.mark.slow
def test_folder_with_classes_txt_and_no_test_split_trains_and_tests_on_val(tmp_path):
    root = tmp_path / "mydata"
    fixtures.make_folder(root, counts={"train": 8, "val": 4}, num_classes=4)
    result = run_script("train.py", "data=folder", f"data.root={root}", *FAST, *where(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "no 'test' split" in result.stdout and "testing on 'val'" in result.stdout
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # Tested on val with the epoch's weights (best == last after one epoch): val's figures.
    assert metrics["test/mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-6)
    assert_means_of_classes(metrics, "test")
    assert {f"test/iou/c{i}" for i in range(4)} <= set(metrics)  # the names of classes.txt
    # The number came from classes.txt and the run folder records it for reproduce/resume.
    assert saved_config(run)["data"]["num_classes"] == 4


def write_coco_export(root: Path, names_by_id: dict[int, str], counts: dict[str, int]) -> None:
    """A COCO-format export (as annotation tools write them) with its own categories."""
    rng = np.random.default_rng(7)
    height, width = fixtures.SIZE
    (root / "annotations").mkdir(parents=True)
    ids = list(names_by_id)
    for split, count in counts.items():
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            image_id = i + 1
            truth = np.zeros(fixtures.SIZE, np.uint8)
            for k in range(2):
                cid = ids[(i + k * 2) % len(ids)]
                y0, x0 = int(rng.integers(0, 20)), int(rng.integers(0, 30))
                y1, x1 = y0 + int(rng.integers(10, 26)), x0 + int(rng.integers(10, 30))
                x1, y1 = min(x1, width), min(y1, height)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": cid, "iscrowd": 0,
                                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                                    "area": float((x1 - x0) * (y1 - y0)),
                                    "bbox": [x0, y0, x1 - x0, y1 - y0]})  # fmt: skip
                truth[y0:y1, x0:x1] = 1 + ids.index(cid)
            file_name = f"img_{i:03d}.jpg"
            Image.fromarray(fixtures.image_for(truth, rng)).save(root / split / file_name)
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
        categories = [{"id": cid, "name": name, "supercategory": "defect"}
                      for cid, name in names_by_id.items()]  # fmt: skip
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )


@pytest.mark.slow
def test_coco_export_with_custom_categories_trains_with_data_root_alone(tmp_path):
    root = tmp_path / "export"
    names_by_id = {12: "dent", 3: "rust", 7: "crack", 20: "scratch", 5: "hole"}  # file order
    write_coco_export(root, names_by_id, {"train2017": 8, "val2017": 4})
    result = run_script("train.py", "data=coco", f"data.root={root}", *FAST, *where(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # background first, then the categories sorted by id (docs/data.md, "coco")
    for name in ("background", "rust", "hole", "crack", "dent", "scratch"):
        assert f"test/iou/{name}" in metrics, sorted(metrics)
    assert saved_config(run)["data"]["num_classes"] == 6  # 1 + the 5 categories


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_truncated_image_stops_with_its_name_or_is_skipped_and_listed(tmp_path):
    root = tmp_path / "mydata"
    fixtures.make_folder(root, counts={"train": 8, "val": 4})
    victim = root / "images" / "train" / "005.png"
    truncate(victim)
    # A loader worker reads it: the error still comes back as one line and exit 2.
    fast = [o for o in FAST if o != "data.num_workers=0"] + ["data.num_workers=1"]
    result = run_script("train.py", "data=folder", f"data.root={root}", *fast, *where(tmp_path))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"error: {victim}: cannot read image" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    result = run_script(
        "train.py", "data=folder", f"data.root={root}", "data.on_bad_sample=skip", *FAST,
        f"paths.data_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'skip'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "1 bad sample(s) skipped in train (epoch 0)" in result.stdout
    assert f"{victim}: cannot read image" in result.stdout
    info = json.loads((tmp_path / "skip" / "run_info.json").read_text())
    (message,) = info["skipped_samples"]["train"]
    assert str(victim) in message and "git" in info  # merged into the metadata, not replacing it
    assert (tmp_path / "skip" / "metrics.json").is_file()


@pytest.mark.slow
def test_check_without_num_classes_or_classes_txt_lists_labels_and_advises(tmp_path):
    root = tmp_path / "mydata"
    fixtures.make_folder(root, counts={"train": 3, "val": 2}, num_classes=5)
    (root / "classes.txt").unlink()
    result = run_script(
        "-m", "segexp.check", "data=folder", f"data.root={root}", f"hydra.run.dir={tmp_path / 'h'}"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "label values found in the masks: 0, 1, 2, 3, 4" in result.stdout
    assert "data.num_classes=5 if classes are numbered from 0" in result.stdout
    advice = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert advice == [
        f"error: data.num_classes is not set and there is no {root}/classes.txt: set "
        "data.num_classes=N (background included) or write classes.txt (one class name a line)."
    ]
    assert "Traceback" not in result.stderr
