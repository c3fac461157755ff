"""Every entry point, run as a user runs it, turns a user error into one line and exit 2.

One bad input per entry point (a missing checkpoint, a nonexistent data root, a bad config
value, a missing mandatory key, an empty folder); each fails before any training or
inference, so the whole file takes a few process starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, run_script

MISSING = "does-not-exist"

# (id, command line after `python`, text the error line must contain); {tmp} is the test's folder.
CASES = [
    (
        "train-missing-key",
        ["train.py", "data=folder", "data.num_classes=3", "logger=csv"],
        "data.root",
    ),
    (
        "evaluate-missing-checkpoint",
        ["evaluate.py", f"ckpt_path={{tmp}}/{MISSING}.ckpt"],
        f"{MISSING}.ckpt",
    ),
    (
        "predict-missing-input",
        ["predict.py", "ckpt_path={tmp}/x.ckpt", f"input={{tmp}}/{MISSING}"],
        f"input={{tmp}}/{MISSING}",
    ),
    (
        "export-missing-checkpoint",
        ["-m", "segexp.export", f"ckpt_path={{tmp}}/{MISSING}.ckpt"],
        f"{MISSING}.ckpt",
    ),
    (
        "check-missing-key",
        ["-m", "segexp.check", "data=folder", "data.num_classes=3"],
        "data.root",
    ),
    (
        "browse-missing-root",
        [
            "-m",
            "segexp.browse",
            "data=folder",
            f"data.root={{tmp}}/{MISSING}",
            "data.num_classes=3",
        ],
        MISSING,
    ),
    ("browse-bad-value", ["-m", "segexp.browse", "--split", "validation"], "split=validation"),
    ("compare-empty-folder", ["-m", "segexp.compare", "{tmp}"], "{tmp}"),
]


@pytest.mark.parametrize(("args", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], names: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0].endswith(".py"):
        args[0] = str(REPO / args[0])
    # Run from tmp_path, so that a Hydra app's run folder (outputs/...) lands there.
    result = run_script(*args, cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    assert names.format(tmp=tmp_path) in errors[0]
    assert "Traceback" not in output


HYDRA_APPS = [
    ["train.py"],
    ["evaluate.py"],
    ["predict.py"],
    ["-m", "segexp.export"],
    ["-m", "segexp.check"],
    ["-m", "segexp.tune_crf"],
    ["-m", "segexp.browse"],
]


@pytest.mark.parametrize("app", HYDRA_APPS, ids=[a[-1] for a in HYDRA_APPS])
def test_misspelled_key_exits_2_with_hydras_message(tmp_path: Path, app: list[str]) -> None:
    """A key the config does not have is rejected by Hydra before our code runs; Hydra exits
    1 there, which schedulers and scripts read as a crash. It must be 2, like our own errors,
    with Hydra's message naming the key and how to add it, and no traceback."""
    args = [str(REPO / app[0]) if app[0].endswith(".py") else app[0], *app[1:]]
    result = run_script(*args, "no_such_key=3", cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Could not override 'no_such_key'" in result.stderr
    assert "+no_such_key=3" in result.stderr  # the fix, if the key was meant to be new
    assert "Traceback" not in output


def untrusted_checkpoint(folder: Path, compose_cfg) -> Path:
    """A checkpoint whose loss is ``os.system``: every loading command refuses it."""
    from tests.tiny_checkpoint import poisoned_copy, write_checkpoint, write_folder_dataset

    good = write_checkpoint(write_folder_dataset(folder) / "good.ckpt", compose_cfg)
    attack = {"_target_": "os.system", "command": "true"}
    return poisoned_copy(good, folder / "untrusted.ckpt", "hyper_parameters", "loss", attack)


# (id, segexp arguments, text of the error); {tmp} is the test's folder, {bad} an untrusted checkpoint.
EARLY = [
    ("eval-missing-checkpoint", ["eval", f"ckpt_path={{tmp}}/{MISSING}.ckpt"], MISSING),
    ("eval-untrusted-checkpoint", ["eval", "ckpt_path={bad}"], "os.system"),
    ("predict-missing-input", ["predict", "ckpt_path={bad}", f"input={{tmp}}/{MISSING}"], MISSING),
    ("export-untrusted-checkpoint", ["export", "ckpt_path={bad}"], "os.system"),
    ("tune-crf-untrusted-checkpoint", ["tune-crf", "ckpt_path={bad}"], "os.system"),
    ("train-missing-key", ["train", "data=folder", "data.num_classes=3"], "data.root"),
]


@pytest.mark.parametrize(("args", "names"), [c[1:] for c in EARLY], ids=[c[0] for c in EARLY])
def test_a_user_error_comes_before_lightnings_import(tmp_path, compose_cfg, args, names):
    """A wrong path, a refused checkpoint or a missing key is reported before the command
    imports Lightning and the model zoo (seconds of start-up a user would wait for nothing):
    the command runs in a fresh process, which then says whether Lightning was imported."""
    bad = untrusted_checkpoint(tmp_path / "ckpt", compose_cfg) if "{bad}" in str(args) else None
    argv = [a.format(tmp=tmp_path, bad=bad) for a in args]
    probe = (
        "import sys; from segexp.cli.main import main\n"
        f"sys.argv = ['segexp', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    print('EXIT=' + str(stop.code))\n"
        "print('LIGHTNING=' + str('pytorch_lightning' in sys.modules))"
    )
    result = run_script("-c", probe, cwd=tmp_path, timeout=300)
    assert "EXIT=2" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    assert names in result.stderr, result.stderr[-3000:]
    assert "LIGHTNING=False" in result.stdout, result.stdout[-2000:]
