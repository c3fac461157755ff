"""Parameter groups and LR schedules: groups as configured, LR sequences equal to their formulas."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from segexp.model.optim import build_optimizer, cosine, onecycle, param_groups, poly
from tests.conftest import CONF

SCHEDULERS = sorted(path.stem for path in (CONF / "scheduler").glob("*.yaml"))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
        self.frozen = nn.Conv2d(2, 2, 1)
        self.frozen.requires_grad_(False)


def names(params, module):
    lookup = {id(p): n for n, p in module.named_parameters()}
    return sorted(lookup[id(p)] for p in params)


def test_param_groups_split_encoder_and_norm_bias():
    model = Tiny()
    groups = {g["name"]: g for g in param_groups(model, 0.1, 0.01, 0.25, True)}
    assert names(groups["encoder"]["params"], model) == ["encoder.0.weight"]
    assert names(groups["encoder_no_decay"]["params"], model) == [
        "encoder.1.bias",
        "encoder.1.weight",
    ]
    assert names(groups["decoder"]["params"], model) == ["decoder.0.weight", "decoder.2.weight"]
    assert names(groups["decoder_no_decay"]["params"], model) == [
        "decoder.0.bias",
        "decoder.1.bias",
        "decoder.1.weight",
        "decoder.2.bias",
    ]
    assert groups["encoder"]["lr"] == groups["encoder_no_decay"]["lr"] == pytest.approx(0.025)
    assert groups["decoder"]["lr"] == groups["decoder_no_decay"]["lr"] == 0.1
    assert groups["encoder"]["weight_decay"] == groups["decoder"]["weight_decay"] == 0.01
    assert (
        groups["encoder_no_decay"]["weight_decay"]
        == groups["decoder_no_decay"]["weight_decay"]
        == 0
    )
    # Every trainable parameter exactly once; frozen ones nowhere.
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_default_groups_reproduce_a_single_group():
    model = Tiny()
    groups = param_groups(model, 0.1, 0.01)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert all(g["lr"] == 0.1 and g["weight_decay"] == 0.01 for g in groups)


def test_sgd_config_builds_nesterov_groups(compose_cfg):
    cfg = compose_cfg(
        [
            "optimizer=sgd",
            "optimizer.nesterov=true",
            "optimizer.encoder_lr_mult=0.1",
            "optimizer.lr=0.02",
        ]
    )
    optimizer = instantiate(cfg.optimizer)(Tiny())
    assert isinstance(optimizer, torch.optim.SGD)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"encoder": pytest.approx(0.002), "decoder": 0.02}
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_adamw_config_and_bad_class(compose_cfg):
    optimizer = instantiate(compose_cfg(["optimizer=adamw"]).optimizer)(Tiny())
    assert isinstance(optimizer, torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer.optimizer_class='torch.optim.Adamm'"):
        build_optimizer(Tiny(), optimizer_class="torch.optim.Adamm")


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_kernels_only_where_asked_or_on_cuda(compose_cfg, name, monkeypatch):
    """optimizer.fused=null: torch's default on CPU parameters (a CPU run keeps its numbers),
    fused on CUDA ones; true/false as said; an optimizer without a fused kernel refuses."""
    factory = instantiate(compose_cfg([f"optimizer={name}"]).optimizer)
    assert factory.keywords["fused"] is None
    assert not factory(Tiny()).defaults.get("fused")  # CPU: torch's own default (None/False)
    assert build_optimizer(Tiny(), f"torch.optim.{type(factory(Tiny())).__name__}", fused=True
                           ).defaults["fused"] is True  # fmt: skip
    # Every parameter on a CUDA device: fused (the class is stubbed; no GPU needed to decide).
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    seen = {}

    class Recorder(torch.optim.SGD):
        def __init__(self, params, fused=None, **kwargs):
            seen["fused"] = fused
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "RecorderSGD", Recorder, raising=False)
    build_optimizer(Tiny(), "torch.optim.RecorderSGD")
    assert seen["fused"] is True


def test_fused_on_an_optimizer_without_it_names_the_key():
    with pytest.raises(ValueError, match=r"optimizer.fused=True: torch.optim.RAdam"):
        build_optimizer(Tiny(), "torch.optim.RAdam", fused=True)
    assert build_optimizer(Tiny(), "torch.optim.RAdam").defaults.get("fused") is None


def lr_sequence(make_scheduler, steps, lrs=(0.1, 0.01)):
    """LR of every group at optimisation steps 0..steps-1 (scheduler stepped after each)."""
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD(
        [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], momentum=0.9
    )
    scheduler = make_scheduler(optimizer)
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_poly_follows_formula():
    total = 20
    seen = lr_sequence(lambda opt: poly(opt, total_steps=total, power=0.9), total)
    for step, lrs in enumerate(seen):
        factor = (1 - step / total) ** 0.9
        assert lrs == pytest.approx([0.1 * factor, 0.01 * factor])
    assert seen[-1][0] > 0  # the last step still learns


def test_poly_with_warmup():
    total, warmup = 20, 4
    seen = lr_sequence(
        lambda opt: poly(opt, total, 0.9, warmup_steps=warmup, warmup_start=0.1), total
    )
    for step, lrs in enumerate(seen):
        factor = 0.1 + 0.9 * step / warmup if step < warmup else (1 - step / total) ** 0.9
        assert lrs[0] == pytest.approx(0.1 * factor)


def test_cosine_with_linear_warmup_follows_formula():
    total, warmup, floor = 30, 5, 0.05
    seen = lr_sequence(lambda opt: cosine(opt, total, warmup, 0.2, floor), total)
    for step, lrs in enumerate(seen):
        if step < warmup:
            factor = 0.2 + 0.8 * step / warmup
        else:
            progress = (step - warmup) / (total - warmup)
            factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lrs == pytest.approx([0.1 * factor, 0.01 * factor])
    assert seen[warmup][0] == pytest.approx(0.1)


def test_onecycle_follows_formula():
    total, pct, div, final_div = 20, 0.3, 25.0, 1e4
    seen = lr_sequence(lambda opt: onecycle(opt, total, pct, div, final_div), total)
    peak_step = pct * total - 1

    def anneal(start, end, fraction):
        return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)

    for step, lrs in enumerate(seen):
        for peak, lr in zip((0.1, 0.01), lrs):
            start = peak / div
            if step <= peak_step:
                expected = anneal(start, peak, step / peak_step)
            else:
                expected = anneal(
                    peak, start / final_div, (step - peak_step) / (total - 1 - peak_step)
                )
            assert lr == pytest.approx(expected)
    assert max(s[0] for s in seen) == pytest.approx(0.1)


def test_schedules_refuse_an_unbounded_run():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for factory in (poly, cosine, onecycle):
        with pytest.raises(ValueError, match="trainer.max_epochs or trainer.max_steps"):
            factory(optimizer, total_steps=float("inf"))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_option_through_segmodule(compose_cfg, name):
    """SegModule.configure_optimizers with each scheduler/ option: groups, per-step interval."""
    from segexp.model.module import build_module

    cfg = compose_cfg([f"scheduler={name}", "optimizer.encoder_lr_mult=0.5"])
    module = build_module(cfg)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    configured = module.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in configured["optimizer"].param_groups}
    if name == "none":
        assert "lr_scheduler" not in configured
        assert lrs["encoder"] == pytest.approx(0.5 * lrs["decoder"])
        return
    assert configured["lr_scheduler"]["interval"] == "step"
    scheduler = configured["lr_scheduler"]["scheduler"]
    for _ in range(10):
        configured["optimizer"].step()
        scheduler.step()
    lrs = {g["name"]: g["lr"] for g in configured["optimizer"].param_groups}
    assert lrs["encoder"] == pytest.approx(
        0.5 * lrs["decoder"]
    )  # the multiplier survives the schedule
