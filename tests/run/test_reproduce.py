"""reproduce=<run> and resume=<run> (segexp/run/reproduce.py, segexp/cli/argv.py), and the seeded data they rely on."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segexp.cli.argv import rewrite_argv
from segexp.data.sampling import SeededAugmentation, SeededSampler
from segexp.run.reproduce import ReproduceError, prepare_config
from segexp.run.wandb_id import read_wandb_id as wandb_run_id
from tests.conftest import TINY, run_script


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A minimal run folder: what rewrite_argv needs (.hydra/config.yaml)."""
    run = tmp_path / "outputs" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    return run


def test_argv_without_reproduce_or_resume_is_unchanged():
    argv = ["train.py", "model=unet", "-m", "seed=1,2"]
    assert rewrite_argv(argv) == argv


def test_reproduce_composes_the_saved_config_into_a_new_folder(run_dir):
    argv = rewrite_argv(["train.py", f"reproduce={run_dir}", "trainer.max_epochs=3", "-m"])
    assert argv[:5] == [
        "train.py",
        "--config-path",
        str(run_dir / ".hydra"),
        "--config-name",
        "config",
    ]
    assert "trainer.max_epochs=3" in argv and "-m" in argv
    assert f'++reproduce="{run_dir}"' in argv
    # A new folder, as unique as a plain run's (not the original's).
    assert any(a.startswith("hydra.run.dir='${unique_dir:outputs/") for a in argv)
    assert not any(str(run_dir) in a for a in argv if a.startswith("hydra.run.dir"))
    # A DDP child re-launched with the rewritten command line is left alone.
    assert rewrite_argv(argv) == argv


def test_resume_reuses_the_folder_without_rewriting_its_config(run_dir):
    argv = rewrite_argv(["train.py", f"resume={run_dir}", "data.num_workers=2"])
    assert f'hydra.run.dir="{run_dir}"' in argv and "hydra.output_subdir=null" in argv
    assert "data.num_workers=2" in argv  # changes how it runs, not what it computes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer.lr=0.1"], "would change it: optimizer.lr=0.1"),
        (["trainer.max_epochs=20"], "reproduce="),
        (["model=fpn"], "cannot apply model=..."),
    ],
)
def test_resume_refuses_overrides_that_change_the_run(run_dir, args, message):
    with pytest.raises(ReproduceError, match=message.replace(".", r"\.").replace("=", "=")):
        rewrite_argv(["train.py", f"resume={run_dir}", *args])


def test_reproduce_refuses_group_choices_and_bad_folders(run_dir, tmp_path):
    with pytest.raises(ReproduceError, match="cannot apply loss=...*loss.<key>=<value>"):
        rewrite_argv(["train.py", f"reproduce={run_dir}", "loss=dice"])
    with pytest.raises(ReproduceError, match="not a folder"):
        rewrite_argv(["train.py", f"reproduce={tmp_path / 'nope'}"])
    with pytest.raises(ReproduceError, match="did you mean its parent"):
        rewrite_argv(["train.py", f"reproduce={run_dir / '.hydra'}"])
    with pytest.raises(ReproduceError, match="multirun"):
        rewrite_argv(["train.py", "-m", f"resume={run_dir}"])
    with pytest.raises(ReproduceError, match="not both"):
        rewrite_argv(["train.py", f"reproduce={run_dir}", f"resume={run_dir}"])


def test_resume_keeps_the_wandb_run_id_and_points_at_last_ckpt(compose_cfg, tmp_path):
    cfg = prepare_config(compose_cfg(["logger=wandb"]))
    run = Path(cfg.paths.output_dir)
    run_id = cfg.logger.wandb.id
    assert run_id and (run / "wandb_id.txt").read_text().strip() == run_id
    assert wandb_run_id(run) == run_id

    resumed = compose_cfg(["logger=wandb", f"+resume={run}"])
    with pytest.raises(ReproduceError, match="no .*last.ckpt.*reproduce="):
        prepare_config(resumed)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": 1}, run / "checkpoints" / "last.ckpt")
    resumed = prepare_config(resumed)
    assert resumed.logger.wandb.id == run_id and resumed.logger.wandb.resume == "allow"
    assert resumed.ckpt_path == str(run / "checkpoints" / "last.ckpt")

    reproduced = compose_cfg(["logger=wandb", f"+reproduce={run}", f"+logger.wandb.id={run_id}"])
    assert prepare_config(reproduced).logger.wandb.id != run_id  # a new W&B run

    (run / "metrics.json").write_text("{}")  # written only when a run completes
    with pytest.raises(ReproduceError, match="already finished.*ckpt_path=.*reproduce="):
        prepare_config(compose_cfg(["logger=wandb", f"+resume={run}"]))


def test_seeded_sampler_depends_on_seed_and_epoch_only():
    sampler = SeededSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(SeededSampler(10, seed=3)) == first  # another process, another worker count
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    # A mid-epoch resume continues the same order after the samples already trained on, in
    # every iterator of that epoch, even one started before set_epoch (Lightning's restart
    # does that); the next epoch is whole.
    resumed = SeededSampler(10, seed=3, resume_at=(1, 4))
    assert list(resumed) == second[4:]  # epoch still 0: the resumed epoch's order regardless
    resumed.set_epoch(1)
    assert list(resumed) == second[4:]
    resumed.set_epoch(2)
    assert resumed.resume_at is None and sorted(i for i, _ in resumed) == list(range(10))
    resumed.set_epoch(0)
    assert list(resumed) == first


def test_seeded_augmentation_is_reproducible_and_transforms_independent():
    import albumentations as A

    from segexp.data.datasets.base import SegDataset
    from segexp.data.transforms import build_transform

    class Tiny(SegDataset):
        def __init__(self):
            super().__init__(
                "train", build_transform([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
            )
            self.samples = [("a.png", "a_mask.png")]

        def load(self, index):
            image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
            return image, image[..., 0].copy()

    data = SeededAugmentation(Tiny())
    masks = [data[(0, seed)]["mask"] for seed in range(40)]
    assert all((data[(0, seed)]["mask"] == masks[seed]).all() for seed in range(5))
    raw = Tiny().load(0)[1]
    kinds = set()
    for mask in masks:
        m = mask.numpy()
        h, v = (m == raw[:, ::-1]).all(), (m == raw[::-1]).all()
        kinds.add(("id" if (m == raw).all() else "") + ("h" if h else "") + ("v" if v else ""))
    # All four flip combinations occur: the two flips draw from one stream, not the same seed.
    assert len(kinds) == 4, kinds
    random.seed(0)  # the global RNGs do not reach albumentations' own state; seeds do


def train_until_sigterm(base: list[str], run_dir, epoch: int, batch: int):
    """``train.py`` that sends itself SIGTERM after training batch ``batch`` of ``epoch``."""
    signal_at = "+callbacks.send_signal"
    return run_script(
        "train.py", *base, f"hydra.run.dir={run_dir}", f"{signal_at}._target_=tests.run.test_signals.SendSignal",
        f"{signal_at}.signum=15", f"{signal_at}.epoch={epoch}", f"{signal_at}.batch={batch}",
    )  # fmt: skip


@pytest.mark.slow
def test_cli_reproduce_and_resume_after_sigterm_equal_the_original(tmp_path):
    """In fresh processes, like a user: train; reproduce= (2 workers instead of 0); a run
    killed by SIGTERM in the middle of epoch 0, then resume= -- all end with the same metrics."""
    data = tmp_path / "data"
    # 12 images in batches of 4: three steps an epoch, two epochs.
    base = [*TINY, "data.generate.num_train=12", "trainer.max_epochs=2", f"paths.data_dir={data}"]
    original = tmp_path / "original"
    result = run_script("train.py", *base, f"hydra.run.dir={original}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((original / "metrics.json").read_text())

    copy = tmp_path / "reproduced"
    saved_config = (original / ".hydra" / "config.yaml").read_text()
    result = run_script(
        "train.py", f"reproduce={original}", "data.num_workers=2", f"hydra.run.dir={copy}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((copy / "metrics.json").read_text()) == metrics  # bit for bit, on the CPU
    config = OmegaConf.load(copy / ".hydra" / "config.yaml")
    assert config.reproduce == str(original) and config.data.num_workers == 2
    assert (original / ".hydra" / "config.yaml").read_text() == saved_config  # untouched

    # The process sends itself SIGTERM after batch 0 of epoch 0; it stops after batch 1.
    killed = tmp_path / "killed"
    result = train_until_sigterm(base, killed, epoch=0, batch=0)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "stopped by SIGTERM mid-epoch (epoch 0, step 2)" in result.stderr
    assert not (killed / "metrics.json").exists()
    saved_config = (killed / ".hydra" / "config.yaml").read_text()

    result = run_script("train.py", f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((killed / "metrics.json").read_text()) == metrics  # as if never stopped
    assert (killed / ".hydra" / "config.yaml").read_text() == saved_config
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (original / "checkpoints").iterdir())
    info = json.loads((killed / "run_info.json").read_text())
    assert len(info["resumes"]) == 1  # the first start's metadata stays; the resume is added
    assert f'++resume="{killed}"' in info["resumes"][0]["command"]


def test_resume_refusal_is_a_short_message_from_the_cli(run_dir):
    result = run_script("train.py", f"resume={run_dir}", "optimizer.lr=1")
    assert result.returncode == 2 and "would change it: optimizer.lr=1" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_run_is_left_alone_and_plain_resume_override_composes(compose_cfg, tmp_path):
    """train.yaml declares reproduce/resume (null), so ``resume=<run>`` needs no ``+``; on a
    run with neither (and no W&B logger) prepare_config changes nothing in the config."""
    cfg = compose_cfg()
    assert cfg.reproduce is None and cfg.resume is None
    before = OmegaConf.to_container(cfg)
    assert OmegaConf.to_container(prepare_config(cfg)) == before
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 3}, last)
    resumed = prepare_config(compose_cfg([f"resume={run}"]))
    changed = {
        key for key, value in OmegaConf.to_container(resumed).items() if before.get(key) != value
    }
    assert changed == {"resume", "ckpt_path"} and resumed.ckpt_path == str(last)


@pytest.fixture(scope="module")
def loader_workers_run(tmp_path_factory) -> tuple[list[str], dict]:
    """The uninterrupted run both cases of the test below compare with: (overrides, metrics)."""
    folder = tmp_path_factory.mktemp("loader-workers")
    base = [
        *TINY, "data.generate.num_train=12", "trainer.max_epochs=3", "data.num_workers=2",
        "test=false", f"paths.data_dir={folder / 'data'}",
    ]  # fmt: skip
    original = folder / "original"
    result = run_script("train.py", *base, f"hydra.run.dir={original}")
    assert result.returncode == 0, result.stderr[-3000:]
    return base, json.loads((original / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("epoch", "batch"), [(1, 0), (0, 2)], ids=["mid-epoch", "epoch-end"])
def test_resume_with_loader_workers_equals_the_original(tmp_path, loader_workers_run, epoch, batch):
    """With loader workers, Lightning's restart starts the train iterator before set_epoch,
    and workers prefetch at once: the resumed epoch must still be drawn in its own order
    (it was drawn in epoch 0's order, so resumed runs trained on other data)."""
    base, expected = loader_workers_run
    killed = tmp_path / "killed"
    result = train_until_sigterm(base, killed, epoch=epoch, batch=batch)
    assert result.returncode == 143, result.stderr[-3000:]
    result = run_script("train.py", f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((killed / "metrics.json").read_text()) == expected
