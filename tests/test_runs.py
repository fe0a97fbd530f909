"""Runs that survive: no code from files."""
import os

import pytest
import torch

from sbvae import runs
from sbvae.cli.evaluate import main as evaluate
from test_training import fit, run_dirs


# -- no code from files --------------------------------------------------------------------------

class Payload:
    """Unpickling it with weights_only=False creates a file: the stand-in for a hidden program."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the file does what it says: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_train_refuses_a_checkpoint_that_would_run_code(tmp_path, config_path, capsys, crafted):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--ckpt_path", str(path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"sbvae-train: refusing to load {path}:") and "Traceback" not in err
    assert not marker.exists() and not run_dirs(tmp_path)  # nothing ran, no run folder was started


def test_eval_refuses_a_checkpoint_that_would_run_code(capsys, crafted):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_info:
        evaluate(["--ckpt", str(path), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sbvae-eval: refusing to load {path}:") and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()
