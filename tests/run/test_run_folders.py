"""Unique run folders (segexp/run/rundir.py): runs started in the same second never share one."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segexp.run.rundir import RUN_DIR_RESOLVER, claim_unique_dir, register_run_dir_resolver
from tests.conftest import REPO, TINY, start_script, stop_started


def test_claim_unique_dir_takes_the_next_free_name(tmp_path):
    base = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    assert claim_unique_dir(str(base)) == str(base)
    assert claim_unique_dir(str(base)) == f"{base}-1"
    (tmp_path / "outputs" / "2026-01-01" / "12-00-00-2").mkdir()  # taken by someone else
    assert claim_unique_dir(str(base)) == f"{base}-3"
    assert sorted(p.name for p in base.parent.iterdir()) == [
        "12-00-00",
        "12-00-00-1",
        "12-00-00-2",
        "12-00-00-3",
    ]


def test_claim_unique_dir_concurrent_callers_get_distinct_folders(tmp_path):
    base = str(tmp_path / "same-second")
    with ThreadPoolExecutor(max_workers=8) as pool:
        folders = list(pool.map(lambda _: claim_unique_dir(base), range(16)))
    assert len(set(folders)) == 16 and all(Path(f).is_dir() for f in folders)


def test_resolver_gives_one_folder_per_config(tmp_path):
    """Every reading of hydra.run.dir in a run (Hydra, Lightning's DDP launcher) is one folder."""
    register_run_dir_resolver()
    register_run_dir_resolver()  # idempotent
    assert OmegaConf.has_resolver(RUN_DIR_RESOLVER)
    cfg = OmegaConf.create({"dir": f"${{unique_dir:{tmp_path}/run}}"})
    assert cfg.dir == cfg.dir == str(tmp_path / "run")
    other = OmegaConf.create({"dir": f"${{unique_dir:{tmp_path}/run}}"})
    assert other.dir == f"{tmp_path}/run-1"  # another run: another folder


@pytest.mark.slow
def test_four_runs_started_at_once_get_four_folders(tmp_path, data_dir):
    """train.py started 4 times at once, without hydra.run.dir: 4 folders under outputs/, all finish.

    Run from tmp_path, so outputs/ is the test's own; the data is generated once first,
    as 4 runs that each generate it into one folder would race."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, f"paths.data_dir={data_dir}"])
    instantiate(cfg.data.generate)()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [str(REPO / "train.py"), *TINY, f"paths.data_dir={data_dir}", "test=false"]
    logs = [tmp_path / f"run{index}.log" for index in range(4)]
    runs = [start_script(*command, output=log, cwd=tmp_path, env=env) for log in logs]
    try:
        for run in runs:
            run.wait(timeout=900)
    finally:
        stop_started(*runs)
    outputs = [log.read_text() for log in logs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    folders = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    assert len(folders) == 4, folders
    for folder in folders:
        assert (folder / ".hydra" / "config.yaml").is_file()
        assert "val/mIoU" in json.loads((folder / "metrics.json").read_text())
        info = json.loads((folder / "run_info.json").read_text())
        assert "resumes" not in info  # no second run wrote into this folder
    # Each run reported its own folder.
    reported = sorted(
        line.split("run folder:", 1)[1].strip()
        for output in outputs
        for line in output.splitlines()
        if line.startswith("run folder:")
    )
    assert reported == sorted(str(f.resolve()) for f in folders)
