"""Shared fixtures: the real config composed the way users run it, made tiny."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import Phase, settings
from omegaconf import DictConfig, open_dict

from segexp.configs import CONF_DIR
from tests import forkrun

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR  # segexp/conf: the configs the package ships

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def in_ci() -> bool:
    """CI sets CI=true; there every test must run (a missing service or tool is a failure)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


# Property tests (hypothesis): no deadline (a loaded 2-core machine is slow now and then);
# under CI=true the same examples every run and no example database, so a failure is
# reproducible from the log; locally new examples each run, failures replayed first.
settings.register_profile("segexp", deadline=None)
settings.register_profile("segexp-ci", deadline=None, derandomize=True, database=None)
# `make mutation` (SEGEXP_MUTATION=1): a failing example fails the test at once, unshrunk;
# shrinking it ran many mutants past their timeout, and one failure is all a kill needs.
settings.register_profile(
    "segexp-mutation", deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
if os.environ.get("SEGEXP_MUTATION"):
    settings.load_profile("segexp-mutation")
else:
    settings.load_profile("segexp-ci" if in_ci() else "segexp")

# A tiny, fast variant of the default experiment; every test that trains starts from it.
TINY = [
    "data.generate.num_train=8",
    "data.generate.num_val=4",
    "data.generate.num_test=4",
    "data.generate.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


# The longest test files (minutes each), measured: make test's processes take whole files, and
# xdist would hand out the files with the most tests first, which left a one-test file of four
# minutes to run alone at the end while the other process sat idle. These go first (make test
# passes --no-loadscope-reorder), the rest after them in the same order xdist would use.
LONGEST_FIRST = (
    "tests/test_benchmarks_rest.py",
    "tests/test_benchmarks.py",
    "tests/run/test_slurm.py",
    "tests/cli/test_user_project.py",
    "tests/run/test_checkpoint_trust.py",
    "tests/docs/test_docs.py",
    "tests/run/test_reproduce.py",
    "tests/run/test_checkpoint_faults.py",
    "tests/infer/test_export.py",
    "tests/run/test_compile.py",
    "tests/run/test_resume_faults.py",
    "tests/track/test_loggers_more.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files in LONGEST_FIRST order, then by their number of tests (most first); the tests of
    one file stay together and in their order."""
    stale = [name for name in LONGEST_FIRST if not (REPO / name).is_file()]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names missing files: {stale}")
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    counts = collections.Counter(file_of(item) for item in items)
    order = {
        name: position
        for position, name in enumerate(
            sorted(counts, key=lambda name: (rank.get(name, len(rank)), -counts[name]))
        )
    }
    items[:] = [
        item for _, item in sorted(enumerate(items), key=lambda p: (order[file_of(p[1])], p[0]))
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """The zygote that run_script forks commands from: the test files are imported, no test
    has run yet (tests/forkrun.py)."""
    forkrun.start_zygote()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI=true a skipped test fails, with the reason it would have skipped: a tool or
    service that .ci/run did not install or start must not turn into a green run."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for generated datasets, shared by the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    """compose_cfg(overrides, config_name="train") -> the composed config, writing under tmp_path."""

    def _compose(
        overrides: list[str] = (), config_name: str = "train", tiny: bool = True
    ) -> DictConfig:
        base = TINY if tiny and config_name == "train" else []
        if any(o.startswith("data=") and o != "data=shapes" for o in overrides):
            base = [o for o in base if not o.startswith("data.generate.")]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[*base, *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(data_dir)
        return cfg

    return _compose


def assert_means_of_classes(metrics: dict, split: str) -> None:
    """``<split>/mIoU``, ``mean_acc`` and ``mean_dice`` are the means of the per-class values
    logged beside them (``<split>/iou/<class>``, ...), classes without a value (NaN, or null
    in metrics.json) left out."""
    import math

    for mean, per_class in (("mIoU", "iou"), ("mean_acc", "acc"), ("mean_dice", "dice")):
        values = [
            value
            for key, value in metrics.items()
            if key.startswith(f"{split}/{per_class}/")
            and value is not None
            and not math.isnan(value)
        ]
        assert values, f"no {split}/{per_class}/<class> values in {sorted(metrics)}"
        assert metrics[f"{split}/{mean}"] == pytest.approx(sum(values) / len(values), abs=1e-6)


def start_script(
    *args: str, output: Path, cwd: Path = REPO, env: Mapping[str, str] | None = None
) -> subprocess.Popen | forkrun.Forked:
    """Start ``python *args`` with its stdout and stderr in the file ``output``, and return at
    once: ``subprocess.Popen`` of a fresh interpreter, or the same calls (``pid``, ``poll``,
    ``wait``, ``kill``, ``send_signal``) on a fork of the zygote where ``run_script`` forks."""
    env = command_env(env)
    if forkrun.can_fork(args):
        try:
            return forkrun.spawn(args, cwd=cwd, env=env, output=output)
        except forkrun.ZygoteFailed as failure:
            forkrun.retire(f"{failure}")
    with open(output, "w") as out:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=out)


def stop_started(*processes: subprocess.Popen | forkrun.Forked) -> None:
    """Kill and reap those of ``start_script``'s commands still running (a test's clean-up
    after a failed check)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def new_venv(root: Path) -> Path:
    """A virtual environment at ``root``, without pip, that finds the test environment's
    packages (torch, Lightning, ...) after its own: a ``.pth`` line naming their folder, as
    ``--system-site-packages`` gives a system install. Returns its python."""
    import sysconfig

    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    deps = sysconfig.get_paths()["purelib"]
    (site_packages(python) / "segexp-test-dependencies.pth").write_text(deps + "\n")
    return python


def site_packages(python: Path) -> Path:
    """The site-packages folder of the interpreter ``python``."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.check_output([str(python), "-c", code], text=True).strip())


def command_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """A command's environment: ``env`` (default: this process's), output unbuffered."""
    return {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}


def run_script(
    *args: str,
    cwd: Path = REPO,
    timeout: int = 600,
    env: Mapping[str, str] | None = None,
    python: Path | str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python *args`` the way a user does: a process of its own, as a fork of this one
    that has the libraries imported already where that is faithful (``tests/forkrun.py``),
    else a fresh interpreter (``SEGEXP_TEST_FRESH=1`` forces one). ``env``: the command's
    environment (default: this process's). ``python``: another interpreter (a virtual
    environment's) to run it with, forked from a zygote of that interpreter."""
    env = command_env(env)
    python = str(python) if python is not None else None

    def fresh() -> subprocess.CompletedProcess:
        return subprocess.run(
            [python or sys.executable, *args], cwd=cwd, env=env, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip

    if not forkrun.can_fork(args, python, env):
        return fresh()
    # A fork that fails where a fresh interpreter would not is the test machinery's fault, not
    # the command's: the fresh result stands, and the suite stops forking (a warning says why).
    try:
        return forkrun.run(args, cwd=cwd, env=env, timeout=timeout, python=python)
    except forkrun.ZygoteFailed as failure:
        forkrun.retire(f"{failure}", python)
        return fresh()
    except subprocess.TimeoutExpired as forked:
        try:
            result = fresh()
        except subprocess.TimeoutExpired:
            raise forked from None  # it hangs either way: the command's fault
        forkrun.retire(
            f"{python or 'python'} {' '.join(args)} (in {cwd}) ran past {timeout} s as a fork "
            "of the test zygote, and finished in a fresh interpreter.",
            python,
        )
        return result
