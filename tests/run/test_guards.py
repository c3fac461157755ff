"""Non-finite losses stop before the update; exact resumes restore the RNG states (segexp.run.guards)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from torch import nn

from segexp.run.guards import ExactResume, FiniteLoss, NonFiniteLossError
from segexp.run.lifecycle import train
from tests.run.test_signals import THREE_STEPS, ckpt_state


class NanAfter(nn.Module):
    """Test helper: cross-entropy that returns NaN from training call ``after`` on."""

    def __init__(self, after: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.after, self.calls = after, 0
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.after:
                return loss * float("nan")
        return loss


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(compose_cfg):
    # Three steps an epoch; the loss turns NaN at the 5th step (epoch 1, batch 1).
    cfg = compose_cfg([*THREE_STEPS, "trainer.max_epochs=3"])
    with open_dict(cfg):
        cfg.loss = {"_target_": "tests.run.test_guards.NanAfter", "after": 4}
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    assert "step 4" in message and "epoch 1" in message and "learning rate" in message
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert str(last) in message
    checkpoint = ckpt_state(last)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 3  # the last good one
    assert all(
        torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
    names = sorted(p.name for p in last.parent.iterdir())
    assert names == ["best-epoch000.ckpt", "last.ckpt"]  # nothing saved from the NaN step


def test_finite_loss_passes_finite_and_names_the_step():
    class Trainer:  # the attributes FiniteLoss reads
        global_step, current_epoch, optimizers = 7, 2, []

        class fit_loop:  # noqa: N801
            class epoch_loop:  # noqa: N801
                batch_idx = 3

    guard = FiniteLoss()
    guard.on_before_backward(Trainer(), None, torch.tensor(1.5))
    with pytest.raises(NonFiniteLossError, match="inf at step 7 .epoch 2, batch 3"):
        guard.on_before_backward(Trainer(), None, torch.tensor(float("inf")))


def test_exact_resume_rng_round_trip_and_loads_weights_only(tmp_path):
    callback = ExactResume()
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"callbacks": {"ExactResume": state}}, tmp_path / "s.ckpt")
    loaded = torch.load(tmp_path / "s.ckpt", weights_only=True)["callbacks"]["ExactResume"]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    callback.load_state_dict(loaded)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
