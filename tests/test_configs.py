"""Every shipped sbvae-train config builds what it says and trains a step on tiny images (16 or 32 px, 4 per batch)."""

import glob
import os

import pytest
import torch
import yaml
from test_datasets_files import make_chairs, write_h5

from sbvae.cli.train import build_cli

ROOT = os.path.dirname(os.path.dirname(__file__))
# configs/paper/ holds sweep files for sbvae-sweep, not sbvae-train configs (tests/test_sweep.py loads them).
CONFIGS = sorted(
    c
    for c in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if os.path.relpath(c, os.path.join(ROOT, "configs")).split(os.sep)[0] != "paper"
)


def test_configs_exist():
    names = {os.path.relpath(c, os.path.join(ROOT, "configs")) for c in CONFIGS}
    for required in (
        "quickstart.yaml",
        "quickstart-factorvae.yaml",
        "sprites/vae-sbd.yaml",
        "sprites/vae-deconv.yaml",
        "sprites/factorvae-sbd.yaml",
        "sprites/factorvae-deconv.yaml",
        "shapes3d/vae-sbd.yaml",
        "chairs/vae-sbd.yaml",
        "circles/xy-sbd.yaml",
    ):
        assert required in names


def file_options(dataset, tmp_path):
    """Tiny stand-ins for the datasets that need files; the procedural ones need none."""
    if dataset == "shapes3d":
        write_h5(tmp_path / "3dshapes.h5")
        return ["--data.dataset_options", f"{{path: {tmp_path / '3dshapes.h5'}, allow_subset: true}}"]
    if dataset == "chairs":
        make_chairs(tmp_path / "chairs")
        return ["--data.dataset_options", f"{{path: {tmp_path / 'chairs'}, data_dir: {tmp_path}}}"]
    return []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: os.path.relpath(c, ROOT))
def test_config_builds_and_trains_a_step(config, tmp_path):
    spec = yaml.safe_load(open(config))
    # The smallest images the networks take: the DeConv decoders double 2 x 2 up to 32 px, the rest reach 16.
    size = 32 if spec["model"]["init_args"]["decoder"] in ("deconv", "coordconv") else 16
    torch.manual_seed(0)
    cli = build_cli(
        [
            "--config",
            config,
            *file_options(spec["data"]["dataset"], tmp_path),
            "--data.image_size",
            str(size),
            "--data.batch_size",
            "4",
            "--data.val_size",
            "4",
            "--data.steps_per_epoch",
            "1",
            "--trainer.max_steps",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--images.num_seeds",
            "0",
            "--images.num_images",
            "1",
            "--images.order_images",
            "1",
        ],
        run=False,
    )
    model, data = cli.model, cli.datamodule
    # What the file asks for is what was built; only the image size is the test's.
    module, _, name = spec["model"]["class_path"].rpartition(".")
    assert (type(model).__module__, type(model).__name__) == (module, name)
    for key, value in spec["model"]["init_args"].items():
        assert model.hparams[key] == value, key
    assert model.hparams.image_size == size and model.hparams.channels == data.channels
    assert data.hparams.dataset == spec["data"]["dataset"] and data.data.image_size == size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cli.trainer.fit(model, datamodule=data)
    assert cli.trainer.global_step == 1
    assert all(torch.isfinite(v).all() for v in model.engine.terms.values())
    assert model.engine.draw_ahead == 8  # on the CPU sbvae-train draws blocks of steps: every dataset must take them
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"encoder", "decoder"} <= changed
