"""segexp as a user installs it: a wheel built from this checkout, in a fresh virtual
environment that is neither editable nor the checkout.

The environment reuses the test environment's installed dependencies (``new_venv``) and
installs only segexp's wheel, with ``--no-deps``: nothing is downloaded, and importing
segexp can only find the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, new_venv, run_script, site_packages

# What a wheel is built from: the checkout without run outputs, data or environments.
NOT_SOURCE = (".git", ".venv", "outputs", "multirun", "data", "wandb", "mlruns", "weights", "build")


@dataclass
class Installed:
    """A virtual environment holding segexp's wheel."""

    root: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def segexp(self) -> Path:
        return self.root / "bin" / "segexp"

    @property
    def site_packages(self) -> Path:
        return site_packages(self.python)

    def run(self, *args: str, cwd: Path, timeout: int = 600, **env: str):
        """``segexp ARGS`` in ``cwd``, with a clean PYTHONPATH: what a user's shell runs (the
        environment's console script, which its python runs; a fork of a zygote of that
        python where run_script forks)."""
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        environ.update({"WANDB_MODE": "offline", **env})
        return run_script(
            str(self.segexp), *args, cwd=cwd, env=environ, timeout=timeout, python=self.python
        )


def build_wheel(out: Path) -> Path:
    """segexp's wheel, built from a copy of the checkout (the build writes beside its source)."""
    source = out / "source"

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO  # data/ at the top is run data; segexp/conf/data is configs
        return {n for n in names if n == "__pycache__" or (top and n in NOT_SOURCE)}

    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("segexp-*.whl")
    return wheel


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """segexp's wheel installed in a new virtual environment (session-wide: built once)."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work)
    env = Installed(work / "venv", wheel)
    new_venv(env.root)
    subprocess.run(
        [str(env.python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return env
