"""Sweeps: W&B sweep YAMLs and Optuna configs compose with Hydra; failed and pruned jobs don't end a sweep."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from segexp.run.job import command_line_fixed_keys, run_name, sweep_group
from segexp.track.study import PRUNERS, SAMPLERS, parse_search_space
from segexp.track.sweeps import ERROR_FILE, PRUNED_FILE, run_job
from tests.conftest import CONF, REPO, TINY, run_script

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
HPARAMS_FILES = sorted((CONF / "hparams_search").glob("*.yaml"))
W_AND_B_COMMAND = ["${env}", "segexp", "train", "${args_no_hyphens}"]
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}


def draw_values(spec: dict, rng: random.Random) -> list:
    """Values a W&B sweep could give a parameter: every listed value, or both ends and a random draw."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution", "int_uniform" if isinstance(low, int) else "uniform")
    if distribution in ("int_uniform", "q_uniform"):
        return [low, high, rng.randint(low, high)]
    if distribution in ("log_uniform_values", "q_log_uniform_values"):
        return [low, high, math.exp(rng.uniform(math.log(low), math.log(high)))]
    if distribution == "uniform":
        return [low, high, rng.uniform(low, high)]
    raise AssertionError(f"distribution {distribution!r} not handled by this test; add it")


def check_composes(compose_cfg, key: str, value) -> None:
    """`key=value` (as ${args_no_hyphens} passes it) composes, and lands where it should."""
    cfg = compose_cfg([f"{key}={value}"])
    if key in GROUPS:  # a config group: its option file must exist (compose would have failed)
        assert (CONF / key / f"{value}.yaml").exists()
    else:
        assert OmegaConf.select(cfg, key) == value, f"{key}={value} did not set {key}"
    if key.split(".")[0] == "model":  # the network builds (a key of one arch may not suit another)
        from hydra.utils import instantiate

        instantiate(cfg.model)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_wandb_sweep_yaml_composes(path: Path, compose_cfg) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "segexp"
    assert sweep["command"] == W_AND_B_COMMAND  # Hydra wants key=value, not --key=value
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["metric"]["name"].split("/")[0] in ("val", "train", "test")
    rng = random.Random(0)
    for key, spec in sweep["parameters"].items():
        for value in draw_values(spec, rng):
            check_composes(compose_cfg, key, value)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_wandb_agent_command_runs_segexp(path: Path, tmp_path: Path) -> None:
    """The command a W&B agent runs for a trial (its macros filled in as the agent fills them)
    starts `segexp train` with the trial's values, from a folder that is not a checkout."""
    import shutil
    import subprocess
    import sys

    sweep = yaml.safe_load(path.read_text())
    rng = random.Random(1)
    values = {key: draw_values(spec, rng)[-1] for key, spec in sweep["parameters"].items()}
    macros = {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [sweep["program"]],
        "args_no_hyphens": [f"{key}={value}" for key, value in values.items()],
    }
    command = [w for word in sweep["command"] for w in macros.get(word[2:-1], [word])]
    bin_dir = Path(sys.executable).parent  # where `segexp` is installed beside this python
    assert shutil.which(command[1], path=str(bin_dir)), f"{command[1]} is not a command"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [*command, "--cfg", "job"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    job = yaml.safe_load(result.stdout)
    for key, value in values.items():
        if key not in GROUPS:
            assert OmegaConf.select(OmegaConf.create(job), key) == value, key


def test_misspelt_key_fails_composition(compose_cfg) -> None:
    """What the sweep test relies on: a key that is not in the config is an error."""
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["optimizer.lrr=0.1"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["loss=no_such_loss"])


def sweeper_choices(override: str) -> list:
    """Candidate values of an Optuna sweeper param: every choice, or both ends of an interval/range."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    assert parsed.is_sweep_override(), override
    sweep = parsed.value()
    if hasattr(sweep, "list"):  # choice(...)
        return list(sweep.list)
    if hasattr(sweep, "end"):  # interval(low, high)
        return [sweep.start, sweep.end]
    if hasattr(sweep, "stop"):  # range(start, stop, step)
        return [sweep.start, sweep.stop - sweep.step]
    raise AssertionError(f"unhandled sweep {override}")


@pytest.mark.parametrize("path", HPARAMS_FILES, ids=[p.name for p in HPARAMS_FILES])
def test_optuna_config_composes(path: Path, compose_cfg) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*TINY, f"hparams_search={path.stem}"], return_hydra_config=True
        )
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper._target_ == "hydra_plugins.segexp_optuna_sweeper.sweeper.SegexpOptunaSweeper"
    assert sweeper.storage is None  # <sweep dir>/optuna.journal
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/mIoU"
    assert sweeper.sampler in SAMPLERS and cfg.hparams_search.pruner in PRUNERS
    pruning = cfg.callbacks.optuna_pruning  # each job reports to its trial
    assert pruning.trial is None and pruning.monitor == cfg.optimized_metric
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)  # run folders: trial numbers
    assert sweep["subdir"] == "${hparams_search.trial}"
    distributions, fixed = parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(distributions) == set(sweeper.params) and not fixed
    assert set(sweeper.params) >= {"optimizer.lr", "optimizer.weight_decay", "model", "loss"}
    for key, spec in sweeper.params.items():
        for value in sweeper_choices(f"{key}={spec}"):
            check_composes(compose_cfg, key, value)


def test_run_name_and_group() -> None:
    fixed = command_line_fixed_keys(
        ["-m", "model.arch=unet,fpn", "trainer.max_epochs=1", "loss=choice(ce,dice)"]
    )
    assert fixed == {"trainer.max_epochs"}
    name = run_name(
        ["model.arch=fpn", "trainer.max_epochs=1", "loss=dice", "logger=wandb"], 3, fixed
    )
    assert name == "3:model.arch=fpn,loss=dice"
    assert run_name([], None) is None and run_name([], 2) == "job2"
    assert len(run_name([f"k{i}=v" for i in range(100)])) == 128
    assert sweep_group("multirun/2026-11-27/18-40-00") == "2026-11-27_18-40-00"
    assert sweep_group(None) is None


def test_run_job_failed_and_nan_jobs(compose_cfg) -> None:
    cfg = compose_cfg()
    run_dir = Path(cfg.paths.output_dir)

    def crash(_):
        raise RuntimeError("diverged")

    assert run_job(lambda _: {"val/mIoU": 0.25}, cfg, multirun=True) == 0.25
    # NaN or a missing metric -> None (Optuna: failed trial; NaN would end optuna 2.x's study).
    assert run_job(lambda _: {"val/mIoU": float("nan")}, cfg, multirun=True) is None
    assert run_job(lambda _: {"val/loss": 1.0}, cfg, multirun=False) is None
    assert not (run_dir / ERROR_FILE).exists()
    assert run_job(crash, cfg, multirun=True) is None
    assert "RuntimeError: diverged" in (run_dir / ERROR_FILE).read_text()
    with pytest.raises(RuntimeError, match="diverged"):  # a single run fails as usual
        run_job(crash, cfg, multirun=False)


def test_run_job_pruned_trial_is_pruned_not_failed(compose_cfg, monkeypatch) -> None:
    """A pruned trial: pruned.txt (the sweep summary's status), trial_state in the W&B summary."""
    import optuna
    import wandb

    from segexp.track.loggers import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg()
    run_dir = Path(cfg.paths.output_dir)

    def pruned(_):
        wandb.init(project="segexp-test", dir=str(run_dir), mode="offline").log({"val/mIoU": 0.1})
        raise optuna.TrialPruned("trial 3 pruned after epoch 2")

    assert run_job(pruned, cfg, multirun=True) is None
    assert "after epoch 2" in (run_dir / PRUNED_FILE).read_text()
    assert not (run_dir / ERROR_FILE).exists()
    assert wandb.run is None
    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    assert run["exit_code"] == 0 and run["summary"]["trial_state"] == "pruned"


def test_run_job_finishes_the_wandb_run_of_a_failed_job(compose_cfg, monkeypatch) -> None:
    """The next job of the sweep must not log into the failed job's W&B run."""
    import wandb

    from segexp.track.loggers import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg()
    run_dir = Path(cfg.paths.output_dir)

    def crash(_):
        wandb.init(project="segexp-test", dir=str(run_dir), mode="offline").log({"train/loss": 1.0})
        raise RuntimeError("diverged")

    assert run_job(crash, cfg, multirun=True) is None
    assert wandb.run is None
    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    assert run["exit_code"] == 1 and run["summary"]["train/loss"] == 1.0


@pytest.mark.slow
def test_optuna_sweep_survives_failed_trial_and_records_best(
    tmp_path: Path, data_dir: Path
) -> None:
    """3 trials on tiny data; the seeded sampler sends trial 2 to an arch that does not exist."""
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "~hydra.sweeper.params.model",  # the default model config, with an arch that fails
        "model.arch=choice(unet,no_such_arch)",
        "seed=2",  # trial k samples with seed + k: trial 2 gets no_such_arch
        *TINY,
        "test=false",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done, failed = {}, []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if (job / "metrics.json").exists():
            params = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            done[json.loads((job / "metrics.json").read_text())["val/mIoU"]] = params
        else:
            assert "no_such_arch" in (job / ERROR_FILE).read_text()
            failed.append(job.name)
    assert len(done) + len(failed) == 3 and done and failed, (done, failed)

    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["trials"] == {"complete": len(done), "failed": len(failed)}
    assert failed == ["2"]
    best_value = max(done)
    assert best["best_value"] == pytest.approx(best_value)
    best_overrides = done[best_value]
    for key, value in best["best_params"].items():
        assert any(
            o.startswith(f"{key}=") and o.split("=", 1)[1] == str(value) for o in best_overrides
        )
    # The sweep summary (Hydra callback) ranks the jobs.
    assert (sweep_dir / "compare.md").read_text().count("| failed |") == len(failed)
