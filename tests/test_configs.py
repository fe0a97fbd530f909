"""Every shipped config parses: keys, types and class paths are valid for sbvae-train."""
import glob
import os

import pytest

from sbvae.cli.train import main

ROOT = os.path.dirname(os.path.dirname(__file__))
# configs/paper/ holds sweep files for sbvae-sweep, not sbvae-train configs (tests/test_sweep.py loads them).
CONFIGS = sorted(c for c in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if os.path.relpath(c, os.path.join(ROOT, "configs")).split(os.sep)[0] != "paper")


def test_configs_exist():
    names = {os.path.relpath(c, os.path.join(ROOT, "configs")) for c in CONFIGS}
    for required in ("quickstart.yaml", "quickstart-factorvae.yaml", "sprites/vae-sbd.yaml", "sprites/vae-deconv.yaml",
                     "sprites/factorvae-sbd.yaml", "sprites/factorvae-deconv.yaml"):
        assert required in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: os.path.relpath(c, ROOT))
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: sbvae." in printed and "max_steps:" in printed
