"""Checkpoint trust by identity: a malicious config inside a .ckpt never runs (segexp/run/checkpoint.py).

Each attack writes a marker file if it ever runs. ``test_every_attack_is_live`` builds
them without the check and sees the marker, so the refusals below are not vacuous; the
CLI tests then run ``evaluate.py``, ``predict.py`` and ``python -m segexp.infer.export``
on them: exit 2, one ``error:`` line naming the key, no traceback, no marker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from segexp.run.checkpoint import CheckpointError, load_module, untrusted_targets
from tests.conftest import run_script
from tests.tiny_checkpoint import poisoned_copy, write_checkpoint, write_folder_dataset


def attacks(marker: Path) -> dict[str, tuple[str, str, dict]]:
    """name -> (section, key, config): the config replaces ``section[key]`` in a good checkpoint."""
    m = str(marker)
    touch = f"touch {m}"
    return {
        "os_system": ("hyper_parameters", "net", {"_target_": "os.system", "command": touch}),
        "os_system_via_segexp_prefix": (
            "hyper_parameters",
            "net",
            {"_target_": "segexp.run.checkpoint.os.system", "command": touch},
        ),
        "subprocess_run": (
            "hyper_parameters",
            "loss",
            {"_target_": "subprocess.run", "args": ["touch", m]},
        ),
        "builtins_exec": (
            "hyper_parameters",
            "net",
            {"_target_": "builtins.exec", "_args_": [f"open({m!r}, 'w').close()"]},
        ),
        "builtins_eval": (
            "hyper_parameters",
            "loss",
            {"_target_": "builtins.eval", "_args_": [f"open({m!r}, 'w').close()"]},
        ),
        "path_write_text_via_segexp_prefix": (
            "hyper_parameters",
            "net",
            {
                "_target_": "segexp.run.checkpoint.Path.write_text",
                "self": {"_target_": "segexp.run.checkpoint.Path", "_args_": [m]},
                "data": "pwned",
            },
        ),
        "nested_target_in_loss_args": (
            "hyper_parameters",
            "loss",
            {
                "_target_": "segexp.model.losses.WeightedSum",
                "losses": {"ce": {"_target_": "subprocess.run", "args": ["touch", m]}},
                "weights": {"ce": 1.0},
            },
        ),
        "partial_of_os_system_in_data": (
            "data",
            "generate",
            {"_target_": "segexp.run.checkpoint.os.system", "_partial_": True, "command": touch},
        ),
        "functools_partial_in_data": (
            "data",
            "generate",
            {
                "_target_": "segexp.run.trust.functools.partial",
                "_args_": [
                    {"_target_": "segexp.run.checkpoint.os.system", "_partial_": True},
                    touch,
                ],
            },
        ),
    }


@pytest.fixture
def good(tmp_path, compose_cfg) -> Path:
    root = write_folder_dataset(tmp_path / "folder", labels=(0, 1, 2))
    return write_checkpoint(root / "good.ckpt", compose_cfg, num_classes=4)


def evil_checkpoint(good: Path, name: str, marker: Path) -> Path:
    section, key, config = attacks(marker)[name]
    return poisoned_copy(good, good.with_name(f"evil-{name}.ckpt"), section, key, config)


def plain_instantiate(node):
    """What ``hydra.utils.instantiate`` does with no block list of its own (hydra-core 1.3.2,
    which pyproject allows): locate ``_target_``, build the arguments, call or ``partial``."""
    import functools

    from hydra._internal.utils import _locate

    if isinstance(node, list):
        return [plain_instantiate(value) for value in node]
    if not isinstance(node, dict):
        return node
    values = {k: plain_instantiate(v) for k, v in node.items() if k not in ("_args_",)}
    if "_target_" not in node:
        return values
    target = _locate(values.pop("_target_"))
    partial = values.pop("_partial_", False)
    args = plain_instantiate(node.get("_args_", []))
    return functools.partial(target, *args, **values) if partial else target(*args, **values)


@pytest.mark.parametrize("name", sorted(attacks(Path("m"))))
def test_every_attack_is_live(name, tmp_path, monkeypatch):
    """Built by a Hydra without a block list, each attack runs its payload (the marker
    appears), so the refusals below are not vacuous."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    section, _, config = attacks(marker)[name]
    try:
        built = plain_instantiate(config)
        if section == "data":
            built()  # SegDataModule.prepare_data calls data.generate
    except Exception:
        pass  # the payload ran before the build failed on its return value
    assert marker.exists(), f"attack {name} does not run its payload: the test would prove nothing"


@pytest.mark.parametrize("name", sorted(attacks(Path("m"))))
def test_load_module_refuses_every_attack(name, good, tmp_path):
    marker = tmp_path / "code-ran"
    evil = evil_checkpoint(good, name, marker)
    with pytest.raises(CheckpointError) as error:
        load_module(evil)
    section, key, _ = attacks(marker)[name]
    where = "run_config.data" if section == "data" else section
    assert f"{where}.{key}" in str(error.value) and "untrusted" in str(error.value)
    assert not marker.exists()


def test_trust_is_by_identity_not_by_name():
    refused = untrusted_targets({"_target_": "segexp.run.checkpoint.Path.write_text"}, "net")
    assert refused and "pathlib.Path.write_text" in refused[0]
    assert untrusted_targets({"_target_": "segexp.run.checkpoint.load_module"}, "net")
    # The same allowed object under any name that reaches it passes, in its own slot only.
    for target, slot in (
        ("segexp.data.datasets.FolderDataset", "dataset"),
        ("segexp.data.datasets.folder.FolderDataset", "dataset"),
        ("albumentations.HorizontalFlip", "transforms"),
        ("segexp.model.networks.build_model", "net"),
        ("torch.nn.CrossEntropyLoss", "loss"),
    ):
        assert untrusted_targets({"_target_": target}, slot=slot) == [], target
        assert untrusted_targets({"_target_": target}, slot="scheduler"), target


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"_target_": 3}, "must be a dotted name"),
        ({"_target_": "segexp.model.losses.DiceLoss", "_recursive_": False}, "_recursive_"),
        ({"_target_": "segexp.model.losses.DiceLoss", "_convert_": "all"}, "_convert_"),
        ({"_target_": "segexp.model.losses.DiceLoss", "_partial_": "yes"}, "true or false"),
        ({"_partial_": True, "x": 1}, "without a _target_"),
        ({"_target_": "segexp.model.networks.build_model", "_args_": ["unet"]}, "_args_"),
        (
            {"_target_": "segexp.model.optim.build_optimizer", "optimizer_class": "os.system"},
            "optimizer_class='os.system'",
        ),
        ({"_target_": "albumentations.Lambda"}, "not one of the callables"),
        ({"_target_": "segexp.model.losses..DiceLoss"}, "not a dotted Python name"),
        ({"generate": "${oc.decode:'{_target_: os.system}'}"}, "an interpolation"),
        ({"${oc.env:HOME}": 1}, "an interpolation in a key"),
        ({"_target_": "segexp.model.losses.NoSuchLoss"}, "does not resolve"),
    ],
)
def test_hydra_tricks_are_refused(config, why):
    text = str(config)
    slot = "optimizer" if "optim" in text else "transforms" if "albument" in text else "loss"
    slot = "net" if "networks" in text else slot
    problems = untrusted_targets(config, "loss", slot=slot)
    assert problems and why in problems[0], problems


def test_unknown_top_level_module_is_refused_before_import(capsys):
    sys.modules.pop("this", None)
    problems = untrusted_targets({"_target_": "this.s"}, "net")
    assert "module 'this' is not one segexp builds checkpoints from" in problems[0]
    assert "this" not in sys.modules and capsys.readouterr().out == ""  # its import prints


def test_trust_admits_what_a_package_defines_and_nothing_it_imports():
    target = {"_target_": "tests.tiny_checkpoint.write_folder_dataset"}
    assert "module 'tests' is not one" in untrusted_targets(target)[0]
    assert untrusted_targets(target, trust=["tests"]) == []
    assert untrusted_targets(target, trust=["tests.tiny_checkpoint"]) == []
    assert untrusted_targets(target, trust=["tests.run"])  # another part of the package
    # tests.tiny_checkpoint imports these; trusting the package does not trust them.
    for imported in ("tests.tiny_checkpoint.Path", "tests.conftest.subprocess.run"):
        problems = untrusted_targets({"_target_": imported}, trust=["tests"])
        assert problems and "not one of the callables" in problems[0], imported


def assert_refused(result, marker: Path, key: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "error: ckpt_path=" in result.stderr and key in result.stderr, result.stderr[-2000:]
    assert not marker.exists()


CLI_ATTACKS = sorted(attacks(Path("m")))
FEW = [
    "os_system_via_segexp_prefix",
    "path_write_text_via_segexp_prefix",
    "functools_partial_in_data",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", CLI_ATTACKS)
def test_evaluate_cli_refuses(name, good, tmp_path):
    marker = tmp_path / "code-ran"
    evil = evil_checkpoint(good, name, marker)
    result = run_script("evaluate.py", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'eval'}")
    section, key, _ = attacks(marker)[name]
    assert_refused(result, marker, f"{'run_config.data' if section == 'data' else section}.{key}")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", FEW)
def test_predict_cli_refuses(name, good, tmp_path):
    marker = tmp_path / "code-ran"
    evil = evil_checkpoint(good, name, marker)
    images = good.parent / "images" / "test"
    out = tmp_path / "preds"
    result = run_script(
        "predict.py", f"ckpt_path={evil}", f"input={images}", f"output={out}",
        f"hydra.run.dir={tmp_path / 'predict'}",
    )  # fmt: skip
    assert_refused(result, marker, attacks(marker)[name][1])
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", FEW)
def test_export_cli_refuses(name, good, tmp_path):
    marker = tmp_path / "code-ran"
    evil = evil_checkpoint(good, name, marker)
    out = tmp_path / "model.onnx"
    result = run_script(
        "-m", "segexp.export", f"ckpt_path={evil}", f"output={out}",
        f"hydra.run.dir={tmp_path / 'export'}",
    )  # fmt: skip
    assert_refused(result, marker, attacks(marker)[name][1])
    assert not out.exists()


def issue_payloads(root: Path, count: float) -> dict[str, tuple[str, str, object]]:
    """The two allowlisted-writer payloads of issue 29: ``generate_shapes`` as the network, and
    in the recorded train transforms, drawing ``count`` images under ``root``."""
    generate = {
        "_target_": "segexp.data.shapes.generate_shapes",
        "root": str(root),
        "num_train": count,
        "num_val": 1,
        "num_test": 1,
    }
    return {
        "generate_as_net": ("hyper_parameters", "net", generate),
        "generate_in_transforms": ("data", "train_transforms", [generate]),
    }


@pytest.mark.parametrize("name", sorted(issue_payloads(Path("m"), 1)))
def test_issue_payloads_are_live(name, tmp_path):
    """Built as Hydra would, each payload writes a dataset (the refusals below are not vacuous)."""
    section, _, config = issue_payloads(tmp_path / "written", 1)[name]
    try:
        plain_instantiate(config)
    except Exception:
        pass
    assert any((tmp_path / "written").rglob("*.png"))


def payload_checkpoint(good: Path, name: str, root: Path) -> Path:
    section, key, config = issue_payloads(root, 1e9)[name]
    return poisoned_copy(good, good.with_name(f"payload-{name}.ckpt"), section, key, config)


def commands(good: Path, evil: Path, tmp_path: Path) -> dict[str, list[str]]:
    root = good.parent
    run = f"hydra.run.dir={tmp_path / 'run'}"
    return {
        "evaluate": ["evaluate.py", f"ckpt_path={evil}", run],
        "predict": [
            "predict.py", f"ckpt_path={evil}", f"input={root / 'images' / 'test'}",
            f"output={tmp_path / 'preds'}", run,
        ],
        "export": ["-m", "segexp.export", f"ckpt_path={evil}", f"output={tmp_path / 'm.onnx'}", run],
        "tune-crf": ["-m", "segexp.tune_crf", f"ckpt_path={evil}", run],
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "tune-crf"])
@pytest.mark.parametrize("name", sorted(issue_payloads(Path("m"), 1)))
def test_issue_payloads_refused_by_every_command(name, command, good, tmp_path):
    written = tmp_path / "written"
    evil = payload_checkpoint(good, name, written)
    result = run_script(*commands(good, evil, tmp_path)[command], timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
    key = issue_payloads(written, 1)[name][1]
    assert "error: ckpt_path=" in result.stderr and key in result.stderr, result.stderr[-2000:]
    assert "generate_shapes" in result.stderr
    assert not written.exists()
    assert not (tmp_path / "preds").exists() and not (tmp_path / "m.onnx").exists()
