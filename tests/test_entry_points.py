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
