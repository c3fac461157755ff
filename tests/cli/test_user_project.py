"""A user project made by ``segexp new``, installed as a user installs it, and every segexp
tool run on its own model, dataset and loss from inside its folder; trust decided by the
command that loads a checkpoint, never by the checkpoint.

The project is this test's only code under test that segexp did not ship: its package
``mylab`` gets two additions, a marker its import writes (so a test can tell whether any of
its code ran) and a callback that stops a run with SIGTERM once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytestmark = pytest.mark.slow

TINY = [
    "data.dataset.count=8", "data.dataset.size=32", "data.batch_size=4",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
]  # fmt: skip

ADDITIONS = """
import os
import subprocess  # noqa: F401  (mylab.subprocess.call: a re-export a checkpoint may name)

if os.environ.get("MYLAB_MARKER"):  # a test's witness that this package's code ran
    with open(os.environ["MYLAB_MARKER"], "a") as marker:
        marker.write("mylab imported\\n")
"""

STOP_ONCE = '''
"""A callback of the project's own: SIGTERM this process once, at a training step."""

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class StopOnce(pl.Callback):
    def __init__(self, step: int, flag: str) -> None:
        self.step, self.flag = step, Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.flag.exists():
            self.flag.write_text("sent")
            os.kill(os.getpid(), signal.SIGTERM)
'''


class Project:
    def __init__(self, root: Path, installed) -> None:
        self.root, self.installed = root, installed

    def segexp(self, *args: str, cwd: Path | None = None, **env: str):
        return self.installed.run(*args, cwd=cwd or self.root, **env)

    @property
    def ckpt(self) -> Path:
        return self.root / "runs" / "first" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def project(installed, tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("user")
    made = installed.run("new", "proj", "--package", "mylab", cwd=base)
    assert made.returncode == 0, made.stderr
    root = base / "proj"
    with open(root / "mylab" / "__init__.py", "a") as init:
        init.write(ADDITIONS)
    (root / "mylab" / "testing.py").write_text(STOP_ONCE)
    pip = subprocess.run(
        [str(installed.python), "-m", "pip", "install", "-q", "--no-deps",
         "--no-build-isolation", "-e", str(root)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    project = Project(root, installed)
    first = project.segexp("train", *TINY, "hydra.run.dir=runs/first")
    assert first.returncode == 0, first.stderr[-3000:]
    return project


def test_trains_the_projects_model_dataset_and_loss(project):
    run = project.root / "runs" / "first"
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["_target_"] == "mylab.models.TinyNet"
    assert saved["data"]["dataset"]["_target_"] == "mylab.data.StripesDataset"
    assert saved["loss"]["losses"]["jaccard"]["_target_"] == "mylab.losses.SoftJaccardLoss"
    assert saved["data"]["num_classes"] == 3  # from StripesDataset.class_names
    assert saved["trust"] == ["mylab"]  # the run records what it trusted
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/iou/ground", "val/iou/stripes", "val/iou/disc", "test/mIoU"} <= set(metrics)


def test_segexps_own_options_stay_available(project):
    result = project.segexp("train", "model=unet_small", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "segexp.model.networks.build_model" in result.stdout


def test_evaluates_predicts_and_exports_its_checkpoint(project, monkeypatch):
    evaluate = project.segexp("eval", f"ckpt_path={project.ckpt}", "hydra.run.dir=runs/eval")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "test/mIoU" in json.loads((project.root / "runs/eval/metrics.json").read_text())

    (project.root / "photos").mkdir()
    pixels = np.random.default_rng(1).integers(0, 255, (30, 42, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(project.root / "photos" / "a.png")
    predict = project.segexp(
        "predict", f"ckpt_path={project.ckpt}", "input=photos", "output=preds", "progress=false"
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    mask = np.asarray(Image.open(project.root / "preds" / "masks" / "a.png"))
    assert mask.shape == (30, 42) and mask.max() <= 2

    onnx = project.root / "tiny.onnx"
    export = project.segexp("export", f"ckpt_path={project.ckpt}", f"output={onnx}")
    assert export.returncode == 0, export.stderr[-3000:]
    # Parity checked here too: onnxruntime against the eager network, on a new size.
    import onnxruntime

    from segexp.run.checkpoint import load_module

    monkeypatch.syspath_prepend(str(project.root))
    try:
        net = load_module(project.ckpt, trust=["mylab"]).net.eval()
    finally:  # the rest of the session must not find this project's package imported
        for name in [m for m in sys.modules if m.partition(".")[0] == "mylab"]:
            del sys.modules[name]
    images = torch.randn(2, 3, 36, 52)
    with torch.no_grad():
        expected = net(images).numpy()
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert got.shape == expected.shape == (2, 3, 36, 52)
    assert np.abs(got - expected).max() < 1e-3


def test_a_sigtermed_run_resumes_and_finishes(project):
    run = project.root / "runs" / "stopped"
    flag = project.root / "stop.flag"
    stopped = project.segexp(
        "train", *TINY, "trainer.max_epochs=3", f"hydra.run.dir={run}",
        "+callbacks.stop._target_=mylab.testing.StopOnce", "+callbacks.stop.step=3",
        f"+callbacks.stop.flag={flag}",
    )  # fmt: skip
    assert flag.is_file()  # the signal was sent
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    resumed = project.segexp("train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 6  # 3 epochs of 2 steps, in all
    assert (run / "metrics.json").is_file()


def test_an_optuna_sweep_of_two_trials(project):
    sweep = project.root / "runs" / "optuna"
    result = project.segexp(
        "train", "-m", "hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=2",
        "~hydra.sweeper.params.model", "~hydra.sweeper.params.loss",
        "hparams_search.pruner=none", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for trial in ("0", "1"):
        saved = yaml.safe_load((sweep / trial / ".hydra" / "config.yaml").read_text())
        assert saved["model"]["_target_"] == "mylab.models.TinyNet"
        assert (sweep / trial / "metrics.json").is_file()


def test_two_ddp_ranks_on_the_cpu(project):
    run = project.root / "runs" / "ddp"
    result = project.segexp(
        "train", *TINY, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # the second rank started
    assert (run / "metrics.json").is_file()


@pytest.mark.slurm
def test_a_slurm_sweep_of_its_own_model(project):
    from tests.run.test_slurm import SLURM, cluster_problem

    problem = cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    sweep = project.root / "runs" / "slurm"
    result = project.segexp(
        "train", "-m", *TINY, "optimizer.lr=1e-3,1e-2", *SLURM, f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((sweep / ".submitit").glob("*/*_submitted.pkl"))) == 2  # two SLURM jobs
    for job in ("0", "1"):
        saved = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        assert saved["model"]["_target_"] == "mylab.models.TinyNet"
        assert (sweep / job / "metrics.json").is_file()


def test_init_from_its_checkpoint_and_reproduce(project):
    result = project.segexp("train", *TINY, f"init_from={project.ckpt}", "hydra.run.dir=runs/init")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((project.root / "runs/init/run_info.json").read_text())["init_from"]
    assert record["loaded"] > 0 and not record["missing"]
    again = project.segexp(
        "train", f"reproduce={project.root / 'runs/first'}", "hydra.run.dir=runs/again"
    )
    assert again.returncode == 0, again.stderr[-3000:]


def test_check_browse_and_compare(project):
    check = project.segexp("check", "data=stripes", "data.dataset.count=8")
    assert check.returncode == 0, check.stderr[-2000:]
    assert "0 error(s)" in check.stdout
    grid = project.root / "grid.png"
    browse = project.segexp("browse", "data=stripes", "num=4", f"out={grid}")
    assert browse.returncode == 0 and grid.is_file(), browse.stderr[-2000:]
    compare = project.segexp("compare", "runs/first", "runs/init", "--no-plots")
    assert compare.returncode == 0, compare.stderr[-2000:]


def test_the_scaffolds_own_tests_pass(project):
    result = subprocess.run(
        [str(project.installed.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project.root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 passed" in result.stdout


# -- trust: decided by the command that loads -------------------------------------------------
def evaluate_elsewhere(project, ckpt: Path, tmp_path: Path, *args: str):
    """``segexp eval`` from a folder outside the project (which trusts nothing of its own)."""
    marker = tmp_path / "imported.txt"
    result = project.segexp(
        "eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", *args,
        cwd=tmp_path, MYLAB_MARKER=str(marker),
    )  # fmt: skip
    return result, marker


def test_outside_the_project_its_checkpoint_needs_trust(project, tmp_path):
    refused, marker = evaluate_elsewhere(project, project.ckpt, tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "trust=[mylab]" in refused.stderr and "Traceback" not in refused.stderr
    assert not marker.exists()  # not one line of the package ran
    trusted, marker = evaluate_elsewhere(project, project.ckpt, tmp_path, "trust=[mylab]")
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.exists()


def tampered(project, tmp_path: Path, change) -> Path:
    state = torch.load(project.ckpt, map_location="cpu", weights_only=True)
    change(state)
    path = tmp_path / "tampered.ckpt"
    torch.save(state, path)
    return path


def test_a_checkpoint_cannot_trust_itself(project, tmp_path):
    def claim_trust(state):
        state["trust"] = ["mylab"]
        state["hyper_parameters"]["trust"] = ["mylab"]
        state["run_config"]["trust"] = ["mylab"]

    result, marker = evaluate_elsewhere(project, tampered(project, tmp_path, claim_trust), tmp_path)
    assert result.returncode == 2 and "trust=[mylab]" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "arguments", "defined_in"),
    [
        ("mylab.os.system", {"command": "touch {payload}"}, "system"),
        ("mylab.subprocess.call", {"args": ["touch", "{payload}"]}, "subprocess.call"),
    ],
)
def test_trusting_a_package_does_not_trust_what_it_imports(
    project, tmp_path, target, arguments, defined_in
):
    payload = tmp_path / "payload-ran"
    filled = json.loads(json.dumps(arguments).replace("{payload}", str(payload)))

    def name_a_re_export(state):
        state["hyper_parameters"]["net"] = {"_target_": target, **filled}

    ckpt = tampered(project, tmp_path, name_a_re_export)
    result, _ = evaluate_elsewhere(project, ckpt, tmp_path, "trust=[mylab]")
    assert result.returncode == 2, result.stderr[-2000:]
    assert target in result.stderr and defined_in in result.stderr
    assert not payload.exists()
