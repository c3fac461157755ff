"""compile=true (torch.compile of the network): a process setting, never part of what a run
saves. A compiled run's checkpoint has the plain network's keys, so it evaluates, exports,
loads into an uncompiled module and back, and resumes compiled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segexp.errors import UserError
from segexp.model.module import build_module


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compile_keeps_the_plain_networks_state_dict(compose_cfg):
    """The compiled wrapper is not a child module: the same keys, the same tensors."""
    plain = build_module(compose_cfg())
    compiled = build_module(compose_cfg(["compile=true"]))
    assert plain.compiled_net is None
    assert isinstance(compiled.compiled_net, torch._dynamo.eval_frame.OptimizedModule)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(not name.startswith("compiled") for name, _ in compiled.named_modules())
    assert compiled.compiled_net._orig_mod is compiled.net  # shares the parameters


def test_unknown_compile_mode_names_the_key_and_the_modes(compose_cfg):
    with pytest.raises(UserError, match=r"compile_mode='fastest'.*max-autotune"):
        build_module(compose_cfg(["compile=true", "compile_mode=fastest"]))


@pytest.mark.slow
def test_compiled_run_evaluates_exports_loads_both_ways_and_resumes(compose_cfg, tmp_path):
    from segexp.infer.evaluate import evaluate
    from segexp.infer.export import export
    from segexp.run.checkpoint import load_module
    from segexp.run.lifecycle import train

    before = graphs_compiled()
    cfg = compose_cfg(["compile=true"])
    metrics = train(cfg)
    assert graphs_compiled() > before, "compile=true trained without torch.compile"
    run = Path(cfg.paths.output_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert "test/mIoU" in json.loads((run / "metrics.json").read_text())

    # The checkpoint's state dict is the plain network's: it loads into an uncompiled module
    # (load_module builds one) and gives the compiled module's logits.
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in saved)
    plain = load_module(ckpt).eval()
    compiled = load_module(ckpt).eval()
    compiled.compile_network()
    images = torch.randn(4, 3, 64, 64)  # the batch the run compiled for: no recompile
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-4)
    # ... and back: weights saved from an uncompiled module load into a compiled one.
    compiled.load_state_dict({k: torch.zeros_like(v) for k, v in plain.state_dict().items()})
    compiled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-4)

    # Evaluated compiled and not: the same split, the same scores.
    scores = {}
    for flag in ("true", "false"):
        eval_cfg = compose_cfg([f"ckpt_path={ckpt}", f"compile={flag}"], config_name="eval")
        eval_cfg.paths.output_dir = str(tmp_path / f"eval-{flag}")
        scores[flag] = evaluate(eval_cfg)
    assert scores["true"]["test/mIoU"] == pytest.approx(metrics["test/mIoU"], abs=1e-4)
    assert scores["true"]["test/mIoU"] == pytest.approx(scores["false"]["test/mIoU"], abs=1e-4)

    # Export writes the plain network (TorchScript of a compiled wrapper would fail).
    exported = export(
        compose_cfg([f"ckpt_path={ckpt}", "format=torchscript"], config_name="export")
    )
    assert exported["path"].is_file() and exported["max_abs_diff"] < 1e-3

    # Resume compiled: Lightning's ckpt_path continues the trainer state for a second epoch.
    resumed = compose_cfg(["compile=true", f"ckpt_path={ckpt}", "trainer.max_epochs=2"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    state = torch.load(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    first = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == first["epoch"] + 1
    assert state["global_step"] == 2 * first["global_step"]
