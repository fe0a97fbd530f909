"""sbvae-train: LightningCLI over the sbvae LightningModules and the ground-truth DataModule.

    sbvae-train fit --config configs/quickstart.yaml [--model.init_args.beta 4] [--trainer.max_steps 100]
    sbvae-train fit --config configs/quickstart.yaml --ckpt_path last     # resume
"""
from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from sbvae.callbacks import ImageLogger, RunStatus
from sbvae.data import GroundTruthDataModule
from sbvae.errors import SBVAEError


class SBVAECLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model's image geometry always follows the data; users set it once, on the data.
        parser.link_arguments("data.image_size", "model.init_args.image_size")
        parser.link_arguments("data.channels", "model.init_args.channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/elbo",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{step}",
        })
        parser.add_lightning_class_args(ImageLogger, "images")


def build_cli(args=None, run: bool = True) -> SBVAECLI:
    return SBVAECLI(
        L.LightningModule,
        GroundTruthDataModule,
        subclass_mode_model=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        trainer_defaults={
            "callbacks": [RunStatus()],
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
        },
        save_config_kwargs={"overwrite": True},
    )


def main(args=None) -> None:
    try:
        build_cli(args)
    except SBVAEError as error:
        print(f"sbvae-train: {error}", file=sys.stderr)
        sys.exit(3 if type(error).__name__ == "DivergenceError" else 2)


if __name__ == "__main__":
    main()
