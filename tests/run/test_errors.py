"""segexp.cli.errors: one policy for every entry point (user error -> message + exit 2)."""

from __future__ import annotations

import signal

import pytest
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segexp.cli.errors import exit_codes, user_message
from segexp.data.datasets.base import DataError
from segexp.errors import UserError
from segexp.run.signals import Interrupted
from segexp.run.validate import ConfigError


def test_exit_codes_make_signals_nonzero_and_errors_short(capsys):
    with pytest.raises(SystemExit) as stopped, exit_codes():
        raise SIGTERMException()  # what Lightning raises: SystemExit with code 0
    assert stopped.value.code == 143
    with pytest.raises(SystemExit) as stopped, exit_codes():
        raise ConfigError("data.batch_size=0: must be an integer >= 1")
    assert stopped.value.code == 2
    assert "error: data.batch_size=0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped, exit_codes():
        raise Interrupted(signal.SIGUSR1, "stopped")
    assert stopped.value.code == 128 + signal.SIGUSR1


def test_a_data_error_from_a_loader_worker_prints_only_its_message(capsys):
    """A DataLoader re-raises a worker's exception with the worker's traceback in its text."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            if index == 2:
                raise DataError("images/train/0002.png: cannot read (truncated); re-export it")
            return torch.zeros(1)

    with pytest.raises(SystemExit) as stopped, exit_codes():
        list(DataLoader(Broken(), num_workers=1))
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.strip() == "error: images/train/0002.png: cannot read (truncated); re-export it"
    assert "Traceback" not in err


def test_user_errors_are_found_through_instantiate_and_omegaconf():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with pytest.raises(Exception) as raised:
        instantiate(
            {"_target_": "segexp.data.datamodule.SegDataModule", "dataset": None, "num_classes": 1}
        )
    assert "data.num_classes=1" in user_message(raised.value)

    cfg = OmegaConf.create({"data": {"num_classes": "???"}})
    with pytest.raises(Exception) as raised:
        _ = cfg.data.num_classes
    message = user_message(raised.value)
    assert "data.num_classes" in message and "data.num_classes=VALUE" in message

    assert user_message(KeyError("a bug")) is None  # bugs keep their traceback
    with pytest.raises(KeyError), exit_codes():
        raise KeyError("a bug")
    assert isinstance(ConfigError("x"), UserError) and isinstance(DataError("x"), UserError)
