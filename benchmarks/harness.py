"""What every benchmark shares: the figure record, the settings of a run, clocks, config.

A benchmark module exposes ``run(settings) -> list[Figure]``; ``benchmarks.__main__``
runs them in order and prints one table. A Figure with a target says whether it
HOLDS or MISSES; one without (``target=""``) is an explanatory detail.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexp.configs import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR

# The tiny variant of the default recipe (as tests/conftest.py's TINY): seconds, not minutes.
QUICK_OVERRIDES = [
    "data.generate.num_train=8",
    "data.generate.num_val=4",
    "data.generate.num_test=4",
    "data.generate.image_size=64",
    "data.batch_size=4",
]


@dataclass
class Figure:
    """One printed line: a measured value against its target (or a detail with no target)."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""  # e.g. "<= 1.05"; empty: a detail, not judged
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        if self.value is None:
            return "SKIPPED"
        op, threshold = self.target.split()
        ok = self.value <= float(threshold) if op == "<=" else self.value >= float(threshold)
        return "HOLDS" if ok else "MISSES"

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        target = f"target {self.target}" if self.target else ""
        return f"  {self.name:<52} {value:>10} {self.unit:<8} {target:<16} {self.verdict:<7} {self.note}"


@dataclass
class Settings:
    """What one ``python -m benchmarks`` invocation measures and where it writes."""

    quick: bool = False
    out_dir: Path = REPO / "outputs" / "bench"
    data_dir: Path = REPO / "data"
    clock: str = "wall"  # "wall" or "cpu" (see process_tree_seconds)
    candidates: str = ""  # "", "all" or a comma list of quality.CANDIDATES labels
    cache: dict[str, Any] = field(default_factory=dict)  # values one figure passes to another

    def overrides(self, extra: list[str] = ()) -> list[str]:
        """Hydra overrides for the default recipe at this run's size, writing under out_dir."""
        base = list(QUICK_OVERRIDES) if self.quick else []
        return [*base, f"paths.data_dir={self.data_dir}", *extra]

    def compose(self, extra: list[str] = ()):
        """The composed train config (``conf/train.yaml``) as ``python train.py`` would see it."""
        from hydra import compose, initialize_config_dir
        from omegaconf import open_dict

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=self.overrides(extra))
        with open_dict(cfg):
            cfg.paths.output_dir = str(self.out_dir / "run")
        return cfg


def prepared_datamodule(cfg, stage: str = "fit"):
    """The configured SegDataModule with its data generated (cached) and set up."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def first_batches(loader, count: int) -> list[dict]:
    """``count`` collated batches held in memory (the loader is cycled if it is shorter)."""
    batches: list[dict] = []
    while len(batches) < count:
        for batch in loader:
            batches.append({"image": batch["image"], "mask": batch["mask"]})
            if len(batches) == count:
                break
    return batches


def _child_pids(pid: int) -> list[int]:
    pids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
    except OSError:
        return []
    return pids + [grand for child in pids for grand in _child_pids(child)]


def _proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_tree_seconds() -> float:
    """CPU seconds used by this process and its live children (data-loader workers), divided
    by the number of cores: on a quiet machine that keeps every core busy it equals wall time,
    and on a shared machine it estimates the wall time a quiet one would take."""
    own = sum(os.times()[:2])
    children = sum(_proc_cpu_seconds(pid) for pid in _child_pids(os.getpid()))
    return (own + children) / (os.cpu_count() or 1)


def clock(kind: str) -> Callable[[], float]:
    """``time.perf_counter`` for "wall", ``process_tree_seconds`` for "cpu"."""
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        return process_tree_seconds
    raise ValueError(f"--clock={kind!r}: choose 'wall' or 'cpu'.")


def interleaved(
    variants: dict[str, Callable[[], float]], repeats: int, warmup: bool = False
) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, alternating them so background load hits all alike;
    ``warmup`` runs each once first, untimed (first calls pay one-time initialisation)."""
    if warmup:
        for measure in variants.values():
            measure()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, measure in variants.items():
            results[name].append(measure())
    return results


def best(values: list[float]) -> float:
    """The fastest of the repeats (timeit's rule: slower ones measured other processes' load)."""
    return min(values)


def median(values: list[float]) -> float:
    return statistics.median(values)


def python() -> str:
    return sys.executable


def quiet_lightning() -> None:
    """Silence Lightning's per-run banners so the figures stay readable."""
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401 - its import sets its loggers to INFO; override after

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*log.*")
    warnings.filterwarnings("ignore", message=".*srun.*")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


@contextlib.contextmanager
def silenced():
    """Send stdout and stderr (progress bars, banners) to /dev/null inside the block."""
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield


def run_command(args: list[str], env: dict[str, str], **kwargs: Any):
    """``subprocess.run`` of ``args`` in the repo root, output captured as text: how
    run_checked runs a command. The test suite's smoke run of the quick suite puts its own
    in its place (tests/quick_bench.py: the commands fork from a warm process there)."""
    import subprocess

    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, **kwargs)


RUN = run_command


def run_checked(args: list[str], extra_env: dict[str, str] | None = None, **kwargs: Any) -> str:
    """Run a command in the repo root; its stdout, or a RuntimeError quoting its stderr's end."""
    env = {
        **os.environ,
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        "WANDB_SILENT": "true",
        **(extra_env or {}),
    }
    result = RUN(args, env, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, args[:4]))} ... exited {result.returncode}: "
            f"{result.stderr.strip()[-800:]}"
        )
    return result.stdout


def write_folder_dataset(root, counts, draw, classes, first_seed: int = 0):
    """Write a drawn dataset in the folder layout (images/, masks/, classes.txt).

    ``draw(seed) -> (image uint8 (H, W, 3), mask uint8 (H, W))``; one seed per sample,
    counted up from ``first_seed`` across the splits of ``counts`` ({split: count}).
    """
    from PIL import Image

    root = Path(root)
    seed = first_seed
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = draw(seed)
            seed += 1
            Image.fromarray(image).save(root / "images" / split / f"{index:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{index:04d}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root
