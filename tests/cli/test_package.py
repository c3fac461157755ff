"""The installed program: one ``segexp`` command, its configs inside the wheel, nothing
written into site-packages, and ``--help`` without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexp.cli.main import COMMANDS
from segexp.configs import CONF_DIR
from tests.conftest import REPO

TINY = [
    "data.generate.num_train=8", "data.generate.num_val=4", "data.generate.num_test=4",
    "data.generate.image_size=64", "data.batch_size=4", "data.num_workers=0",
    "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    "logger=csv",
]  # fmt: skip


def files_under(folder: Path) -> set[str]:
    return {
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.slow
def test_the_wheel_holds_every_config_and_the_command(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    shipped = {n.removeprefix("segexp/conf/") for n in names if n.startswith("segexp/conf/")}
    on_disk = {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml")}
    assert on_disk and shipped == on_disk  # one copy of the configs, all of it packaged
    assert "segexp = segexp.cli.main:main" in scripts
    assert any(n.startswith("segexp/cli/project_template/") for n in names)  # segexp new
    assert "hydra_plugins/segexp_project/__init__.py" in names


@pytest.mark.slow
def test_an_installed_wheel_trains_evaluates_and_predicts_from_an_empty_folder(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = files_under(installed.site_packages)
    assert installed.run("--version", cwd=work).stdout.strip() == "segexp 0.1.0"

    train = installed.run("train", *TINY, "hydra.run.dir=run", cwd=work)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (work / "run" / "metrics.json").is_file()
    assert (work / "data").is_dir()  # generated data under the working folder, not the package
    command = json.loads((work / "run" / "run_info.json").read_text())["command"]
    assert command[1:4] == [str(installed.segexp), "train", TINY[0]]  # as the user typed it

    evaluate = installed.run("eval", f"ckpt_path={ckpt}", "hydra.run.dir=eval", cwd=work)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert (work / "eval" / "metrics.json").is_file()

    (work / "in").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "in" / "photo.png")
    predict = installed.run(
        "predict", f"ckpt_path={ckpt}", "input=in", "output=out", "progress=false", cwd=work
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert np.asarray(Image.open(work / "out" / "masks" / "photo.png")).shape == (40, 56)

    # The program runs from site-packages (not this checkout) and wrote nothing there.
    where = subprocess.run(
        [str(installed.python), "-c", "import segexp.cli.train as m; print(m.__file__)"],
        cwd=work, capture_output=True, text=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(installed.site_packages), where
    assert files_under(installed.site_packages) == before
    assert str(REPO / "segexp") not in train.stdout + train.stderr


def test_segexp_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "segexp", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(COMMANDS)


def test_an_unknown_command_is_a_user_error():
    result = subprocess.run(
        [sys.executable, "-m", "segexp", "trian"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no command 'trian'" in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_is_fast(command):
    """``segexp <command> --help`` prints its help and imports no torch or Lightning."""
    probe = (
        "import sys; from segexp.cli.main import main\n"
        f"sys.argv = ['segexp', {command!r}, '--help']\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY=\n" in result.stdout or result.stdout.rstrip().endswith("HEAVY=")
    assert "usage" in result.stdout.lower() or "powered by Hydra" in result.stdout
