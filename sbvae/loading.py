"""Trained models rebuilt from their checkpoints: what sbvae-eval, the report and notebooks (``sbvae.load``) load.

The model's class and arguments and the data settings come from the checkpoint alone: ``runs.load_checkpoint``
refuses a file that would run code, and ``runs.model_class`` builds only sbvae's own models.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from sbvae import runs
from sbvae.data import GroundTruthDataModule
from sbvae.errors import SBVAEError
from sbvae.seeds import recorded_seeds
from sbvae.visualize import traverse


def _arguments(hparams: dict) -> dict:
    """Constructor arguments from saved hyperparameters, without LightningCLI's private keys (_class_path, ...)."""
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def model_from_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", dataset_options: dict | None = None
) -> tuple[L.LightningModule, GroundTruthDataModule, dict]:
    """(model in eval mode on ``device``, its datamodule, the raw checkpoint) of an sbvae checkpoint file;
    ``dataset_options`` override the saved ones (e.g. ``{"split": "heldout"}``)."""
    ckpt = runs.load_checkpoint(path)
    model_class = runs.model_class(ckpt, path)
    if "datamodule_hyper_parameters" not in ckpt:
        raise SBVAEError(f"{path} is not an sbvae-train checkpoint (it lacks the model class or the data settings).")
    model = model_class(**_arguments(ckpt["hyper_parameters"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(torch.device(device)).eval()
    data_args = _arguments(ckpt["datamodule_hyper_parameters"])
    data_args["dataset_options"] = {**(data_args.get("dataset_options") or {}), **(dataset_options or {})}
    return model, GroundTruthDataModule(**data_args), ckpt


def validation_images(datamodule: GroundTruthDataModule, n: int, device: torch.device | str) -> torch.Tensor:
    """The first ``n`` validation images: the same on every run of a sweep (fixed val_seed)."""
    factors = datamodule.validation_factors()[:n].to(device)
    return datamodule.render_fixed(factors, torch.arange(len(factors)))


@dataclass
class LoadedRun:
    """A trained model with the data it was trained on, as ``sbvae.load`` gives it."""

    model: L.LightningModule  # in eval mode: encode, decode, represent, reconstruct, traverse
    datamodule: GroundTruthDataModule
    config: dict[str, Any]  # {"model": {"class_path", "init_args"}, "data": {...}, "seeds": {...}}, as trained
    path: str  # the checkpoint file
    step: int  # its training step

    @property
    def data(self):
        """The dataset (a GroundTruthData): what ``sbvae.metrics`` score and sbvae-eval draws from."""
        return self.datamodule.data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def images(self, n: int = 8) -> torch.Tensor:
        """[n, C, H, W]: the run's first ``n`` validation images, on the model's device."""
        return validation_images(self.datamodule, n, self.device)


def load(
    path: str | os.PathLike,
    replica: int | None = None,
    which: str = "last",
    device: torch.device | str = "cpu",
    dataset_options: dict | None = None,
) -> LoadedRun:
    """A checkpoint file or a run folder (its ``which`` checkpoint: "last" or "best"; a replica-parallel run's
    folder with ``replica=K``) as a ``LoadedRun``; see docs/python-api.md."""
    checkpoint = runs.checkpoint_to_load(path, replica, which)
    model, datamodule, ckpt = model_from_checkpoint(checkpoint, device, dataset_options)
    # The picture code stays in sbvae.visualize; the loaded model lends it its name for notebooks.
    model.traverse = types.MethodType(traverse, model)
    config = {
        "model": {"class_path": ckpt["sbvae_model_class"], "init_args": _arguments(ckpt["hyper_parameters"])},
        "data": _arguments(ckpt["datamodule_hyper_parameters"]),
        "seeds": recorded_seeds(ckpt),
    }
    return LoadedRun(model, datamodule, config, os.path.abspath(checkpoint), int(ckpt.get("global_step", 0)))
