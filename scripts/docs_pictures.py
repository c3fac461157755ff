"""``make docs-pictures``: the pictures of the docs, made from real runs (none drawn by hand).

    python scripts/docs_pictures.py                 # everything (the default run: ~5 min)
    python scripts/docs_pictures.py --only layers   # one group: run, sweep, layers
    python scripts/docs_pictures.py --only run --from-run outputs/<date>/<time>   # a make train run

- ``run``: trains the default experiment (what ``make train`` trains) into a scratch folder
  and copies its pictures (the last validation examples, the curves, the test confusion
  matrix) to ``docs/img/run/``;
- ``sweep``: a 3-job sweep of short runs, its ``compare.html`` page, and a screenshot of it
  in headless chromium (``docs/img/compare_page.png``);
- ``layers``: the package's layers as drawn from the import contract in ``pyproject.toml``
  (``docs/img/layers.png``), so the picture follows the contract.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


def segexp(*args: str, cwd: Path) -> None:
    """Run one segexp command as a user would; stop on failure."""
    subprocess.run([sys.executable, "-m", "segexp", *args], cwd=cwd, check=True)


def newest_run(outputs: Path) -> Path:
    runs = sorted(p.parent for p in outputs.glob("*/*/.hydra/config.yaml"))
    if not runs:
        raise SystemExit(f"no run folder under {outputs}")
    return runs[-1]


def run_pictures(work: Path, from_run: Path | None = None) -> list[Path]:
    """The pictures of a default run: trained here, or ``from_run`` (a `make train` folder)."""
    if from_run is None:
        segexp("train", "logger=csv", cwd=work)
    run = from_run or newest_run(work / "outputs")
    out = IMG / "run"
    out.mkdir(parents=True, exist_ok=True)
    examples = sorted((run / "val" / "examples").glob("epoch_*.png"))
    picks = {
        "examples.png": examples[-1],
        "curves.png": run / "curves.png",
        "confusion.png": run / "test" / "confusion.png",
    }
    for name, source in picks.items():
        shutil.copyfile(source, out / name)
    return [out / name for name in picks]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise SystemExit("chromium is needed for the screenshots (apt-get install chromium)")
    return found


def screenshot(page: str, shot: Path, size: str = "1200,1400") -> Path:
    """A headless-chromium screenshot of ``page`` (a file:// or http:// address)."""
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=5000",
         f"--window-size={size}", f"--screenshot={shot}", page],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return shot


def sweep_pictures(work: Path) -> list[Path]:
    sweep = work / "sweep"
    segexp(
        "train", "-m", "optimizer.lr=0.001,0.003,0.01", "trainer.max_epochs=4", "logger=csv",
        "callbacks.image_logger.every_n_epochs=1", f"hydra.sweep.dir={sweep}", cwd=work,
    )  # fmt: skip
    return [screenshot((sweep / "compare.html").as_uri(), IMG / "compare_page.png")]


# What each layer holds, for the picture (a layer missing here is drawn with its name only).
ROLES = {
    "segexp.cli": "the segexp command: command lines, argv rewrites, exit codes",
    "segexp.track": "loggers, callbacks, pictures, compare page, sweeps, Optuna",
    "segexp.infer": "eval, predict, inference modes, CRF, export",
    "segexp.run": "lifecycle, checkpoints and trust, signals, resume, budget, recipe",
    "segexp.model": "networks, losses, optimizers, metrics, the LightningModule",
    "segexp.data": "datasets, data module, transforms, mask scanner, check, browse",
    "segexp.errors": "UserError: one line and exit 2, raised from any layer",
}


def layers_picture() -> list[Path]:
    """The import contract's layers, top to bottom, as boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segexp.project import tomllib  # the stdlib's, or its backport on Python 3.10

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = contract["contracts"][0]["layers"]
    fig, ax = plt.subplots(figsize=(9, 0.62 * len(layers) + 0.4))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(layers))
    for index, layer in enumerate(layers):
        y = len(layers) - index - 1
        names = [part.strip(" ()") for part in layer.split("|")]
        label = "  |  ".join(name.removeprefix("segexp.") or name for name in names)
        if layer in ROLES:
            label = f"{label}: {ROLES[layer]}"
        if index == 0:
            label = "shims: python -m segexp[.tool], train.py, evaluate.py, predict.py"
        ax.add_patch(
            plt.Rectangle((0.02, y + 0.12), 0.96, 0.76, color=plt.cm.Blues(0.12 + 0.05 * index))
        )
        ax.text(0.5, y + 0.5, label, ha="center", va="center", fontsize=10, family="monospace")
        if index:
            ax.annotate("", xy=(0.5, y + 0.88), xytext=(0.5, y + 1.12),
                        arrowprops={"arrowstyle": "->", "color": "0.3"})  # fmt: skip
    ax.set_title(
        "segexp's layers (arrows: imports); a module imports only its own layer or lower ones",
        fontsize=10,
    )
    path = IMG / "layers.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="run,sweep,layers", help="comma-separated groups")
    parser.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="take the run pictures from this run folder of `make train` instead of training one",
    )
    args = parser.parse_args()
    groups = args.only.split(",")
    IMG.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="segexp-docs-") as scratch:
        work = Path(scratch)
        if "layers" in groups:
            written += layers_picture()
        if "run" in groups:
            written += run_pictures(work, args.from_run)
        if "sweep" in groups:
            written += sweep_pictures(work)
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
