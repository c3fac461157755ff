"""The analysis files and page (segexp.track.analysis, analysis_page) and the per-image changes
of segexp compare, on hand-made masks; the page in headless chromium."""

from __future__ import annotations

import csv
import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexp.infer.analysis import Analysis
from segexp.track.analysis import write_analysis

IGNORE = 255
NAMES = ["background", "<b>cat</b>", "dog & co"]  # class names that need escaping
EVIL = '<img src=x onerror="alert(1)">'


def scenes(count: int = 5, seed: int = 0):
    """(image, target, prediction) triples of 24 x 32 with known, different error counts:
    image i has 20 * i of its object pixels predicted as background."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        target = np.zeros((24, 32), np.uint8)
        target[4:20, 4:14] = 1
        target[6:22, 18:30] = 2
        target[0, :] = IGNORE
        pred = target.copy()
        pred[0, :] = 0
        wrong = np.flatnonzero(target.ravel() == 1)[: 20 * index]
        pred.ravel()[wrong] = 0
        image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        out.append((image, target, pred))
    return out


def analyse(folder: Path, triples, worst_k: int = 3, names=None) -> Analysis:
    analysis = Analysis(NAMES, IGNORE, worst_k=worst_k)
    for index, (image, target, pred) in enumerate(triples):
        name = (names or [f"img{i}" for i in range(len(triples))])[index]
        analysis.add(pred, target, name, f"data/{name}.png", image)
    write_analysis(analysis, folder, f"{EVIL} analysis")
    return analysis


def image_miou(target: np.ndarray, pred: np.ndarray) -> float:
    keep = target != IGNORE
    ious = []
    for cls in range(len(NAMES)):
        p, t = (pred == cls) & keep, (target == cls) & keep
        if (p | t).any():
            ious.append((p & t).sum() / (p | t).sum())
    return float(np.mean(ious))


class Page(HTMLParser):
    """Each table's rows (cell texts), every img src, the scripts' count, tables' data-sorted."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sorted: dict[str, str] = {}
        self.sources: list[str] = []
        self.scripts = 0
        self.body: dict[str, str] = {}
        self._table = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
            self.sorted[self._table] = attrs.get("data-sorted")
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self._cell = []
        elif tag == "img":
            self.sources.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "body":
            self.body = attrs

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[list[str]]:
        return [row for row in self.tables[table] if row]  # the header row has no td


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_files_and_page(tmp_path: Path) -> None:
    triples = scenes()
    names = ["img0", "img1", EVIL, "img3", "img4"]
    analyse(tmp_path, triples, names=names)
    mious = [image_miou(t, p) for _, t, p in triples]
    assert mious == sorted(mious, reverse=True)  # more errors, lower mIoU: 4 is the worst

    summary = json.loads((tmp_path / "analysis.json").read_text())
    assert [w["name"] for w in summary["worst"]] == ["img4", "img3", EVIL]
    assert [w["mIoU"] for w in summary["worst"]] == pytest.approx(mious[:1:-1])
    for entry in summary["worst"]:  # one picture per image: 4 tiles, its caption, a legend
        with Image.open(tmp_path / entry["file"]) as picture:
            assert picture.width > 4 * 128 and picture.height > 128
    assert sorted(p.name for p in (tmp_path / "worst").iterdir()) == [
        "01_img4.png", "02_img3.png", "03_img_src_x_onerror_alert_1.png",
    ]  # fmt: skip
    with Image.open(tmp_path / "worst.png") as grid:
        assert grid.height > 3 * 128  # the three rows in one grid
    with (tmp_path / "per_image.csv").open() as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == names

    text = (tmp_path / "analysis.html").read_text()
    page = parse(text)
    assert EVIL not in text and "<b>cat" not in text  # every user string escaped ...
    assert html.escape(EVIL) in text and "&lt;b&gt;cat&lt;/b&gt;" in text  # ... and shown
    assert page.scripts == 1  # ours only
    pooled = [(t != IGNORE) & (p == t) for _, t, p in triples]
    labelled = sum(int((t != IGNORE).sum()) for _, t, _ in triples)
    accuracy = sum(int(c.sum()) for c in pooled) / labelled
    assert f"pixel accuracy {accuracy:.4f}" in text
    ious = []
    for cls in range(len(NAMES)):
        hit = sum(int(((p == cls) & (t == cls)).sum()) for _, t, p in triples)
        either = sum(int((((p == cls) | (t == cls)) & (t != IGNORE)).sum()) for _, t, p in triples)
        ious.append(hit / either)
    assert f"{len(triples)} images; mIoU {np.mean(ious):.4f}," in text
    assert "np.float" not in text and "np.int" not in text  # numbers sort as numbers
    # Worst images inline; per-image rows lowest mIoU first; every class; the pairs.
    assert len(page.sources) == 3 and all(
        s.startswith("data:image/png;base64,") for s in page.sources
    )
    assert [row[1] for row in page.rows("images")] == ["img4", "img3", EVIL, "img1", "img0"]
    assert [float(row[3]) for row in page.rows("images")] == pytest.approx(sorted(mious), abs=5e-5)
    assert [row[0] for row in page.rows("classes")] == NAMES
    pairs = page.rows("pairs")
    assert pairs[0][:3] == ["<b>cat</b>", "background", str(20 * (1 + 2 + 3 + 4))]
    assert {row[1] for row in page.rows("sizes")} == {"large"}  # 160 and 192 px of 768


def test_page_lists_at_most_html_rows(tmp_path: Path) -> None:
    analysis = Analysis(NAMES, IGNORE, worst_k=0)
    for index, (_, target, pred) in enumerate(scenes(4)):
        analysis.add(pred, target, f"img{index}")
    write_analysis(analysis, tmp_path, "t", html_rows=2)
    page = parse((tmp_path / "analysis.html").read_text())
    assert [row[1] for row in page.rows("images")] == ["img3", "img2"]
    assert not (tmp_path / "worst.png").exists() and page.sources == []


def make_eval_run(root: Path, name: str, triples) -> Path:
    """An eval run folder as segexp eval leaves it (config, metrics, the analysis)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("split: test\n")
    (run / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path={name}.ckpt\n")
    analysis = analyse(run, triples, worst_k=2)
    miou = float(np.mean([row["mIoU"] for row in analysis.rows]))
    (run / "metrics.json").write_text(json.dumps({"test/mIoU": miou}))
    return run


def test_compare_lists_per_image_changes(tmp_path: Path) -> None:
    from segexp.track.compare import compare

    before = scenes(5)
    # The new run fixes image 4 and breaks image 0 (all of class 2 as background).
    after = [(i, t, p.copy()) for i, t, p in before]
    after[4] = (before[4][0], before[4][1], before[4][1].copy())
    after[4][2][0, :] = 0
    after[0][2][after[0][1] == 2] = 0
    base = make_eval_run(tmp_path / "runs", "base", before)
    new = make_eval_run(tmp_path / "runs", "new", after)
    result = compare([base, new], metric="test/mIoU", html=tmp_path / "cmp.html", plots=False)
    assert tmp_path / "runs" / "image_changes.csv" in result["files"]

    expected = {
        f"data/img{i}.png": image_miou(a[1], a[2]) - image_miou(b[1], b[2])
        for i, (b, a) in enumerate(zip(before, after))
    }
    with (tmp_path / "runs" / "image_changes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == sorted(expected, key=lambda k: (expected[k], k))
    assert {r["path"]: float(r["change"]) for r in rows} == pytest.approx(expected)
    assert rows[0]["path"] == "data/img0.png" and rows[-1]["path"] == "data/img4.png"
    assert "better: data/img4.png" in result["markdown"]
    assert "worse: data/img0.png" in result["markdown"]

    page = parse((tmp_path / "cmp.html").read_text())
    better, worse = page.rows("changes-better"), page.rows("changes-worse")
    assert better[0][1] == "data/img4.png" and worse[0][1] == "data/img0.png"
    assert len(better) == 1 and len(worse) == 1  # images 1-3 did not change
    # Pictures where a run kept them: img4 was base's worst, img0 is new's worst.
    assert len(page.sources) == 2


def test_compare_without_two_analysed_runs_has_no_changes(tmp_path: Path) -> None:
    from segexp.track.compare import compare

    make_eval_run(tmp_path / "runs", "only", scenes(2))
    result = compare(tmp_path / "runs", metric="test/mIoU", html=tmp_path / "c.html", plots=False)
    assert not any(f.name == "image_changes.csv" for f in result["files"])
    assert "Per-image changes" not in (tmp_path / "c.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", () => {
  const body = document.body;
  body.setAttribute("data-widths", Array.from(document.images)
    .map((img) => (img.complete ? img.naturalWidth : 0)).join(","));
  const header = document.querySelector("#images thead th[data-col='name']");
  const names = () => Array.from(document.querySelectorAll("#images tbody tr"))
    .map((row) => row.cells[1].textContent).join("|");
  header.click();
  body.setAttribute("data-asc", names());
  header.click();
  body.setAttribute("data-desc", names());
});
</script></body>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_in_a_real_browser(tmp_path: Path) -> None:
    """Images decode, a click on a header sorts, the URL's #sort= sorts on load."""
    triples = scenes()
    analyse(tmp_path, triples, names=["b", "d", "a", "e", "c"])
    page = tmp_path / "analysis.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))

    dom = parse(chromium("--dump-dom", probe.as_uri()).stdout)
    widths = [int(w) for w in dom.body["data-widths"].split(",")]
    assert len(widths) == 3 and min(widths) > 4 * 128  # each worst strip decoded
    assert dom.body["data-asc"] == "a|b|c|d|e" and dom.body["data-desc"] == "e|d|c|b|a"

    mious = [image_miou(t, p) for _, t, p in triples]
    for key, expected in (("mIoU", sorted(mious)), ("-mIoU", sorted(mious, reverse=True))):
        dumped = parse(chromium("--dump-dom", f"{page.as_uri()}#sort={key}").stdout)
        assert dumped.sorted["images"] == key.lstrip("-") + (":desc" if key[0] == "-" else ":asc")
        shown = [float(row[3]) for row in dumped.rows("images")]
        assert shown == pytest.approx(expected, abs=5e-5)
    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,900", page.as_uri())
    with Image.open(shot) as picture:
        assert len(set(picture.convert("RGB").resize((55, 45)).getdata())) > 10  # not blank
