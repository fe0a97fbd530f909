"""LightningDataModule over a GroundTruthData: factors on the CPU, pixels on the model's device.

The loaders yield only factor indices (a few hundred bytes a batch); images
are rendered in ``on_after_batch_transfer``, i.e. on the device the model
runs on, so no worker pool is needed and no pixels cross from the CPU.
"""
from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sbvae.datasets import GroundTruthData, load
from sbvae.errors import SBVAEError


# The first key of every stream says what it is for, so no two purposes share random numbers.
_FACTORS, _RENDER, _EVAL_FACTORS, _EVAL_RENDER = 0, 1, 2, 3


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixed from (seed, rank, step, ...) so that distinct keys never share a stream."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class FactorStream(IterableDataset):
    """An endless supply of factor batches, cut into epochs of ``steps`` batches.

    The generator is seeded from the run seed, the process rank and the global
    step at which iteration starts, so each DDP process sees different data and
    a resumed run continues with fresh samples instead of replaying old ones.
    """

    def __init__(self, data: GroundTruthData, batch_size: int, steps: int, seed_fn):
        self.data, self.batch_size, self.steps, self.seed_fn = data, batch_size, steps, seed_fn

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed_fn())
        for _ in range(self.steps):
            yield self.data.sample_factors(self.batch_size, generator)


class EvaluationRows(IterableDataset):
    """This process's share of a fixed evaluation set as batches of (factor indices, row numbers).

    Process r of w takes rows r, r + w, r + 2w, ...: every row exactly once over all processes.  An
    IterableDataset, so Lightning adds no DistributedSampler, which would pad by repeating rows.
    """

    def __init__(self, factors: torch.Tensor, first_row: int, batch_size: int, shard_fn):
        self.factors, self.first_row, self.batch_size, self.shard_fn = factors, first_row, batch_size, shard_fn

    def _rows(self) -> torch.Tensor:
        rank, world = self.shard_fn()
        return torch.arange(rank, len(self.factors), world)

    def __len__(self) -> int:
        return math.ceil(len(self._rows()) / self.batch_size)

    def __iter__(self):
        for rows in self._rows().split(self.batch_size):
            yield self.factors[rows], rows + self.first_row


class GroundTruthDataModule(L.LightningDataModule):
    """Training and validation streams of one ``sbvae.datasets`` dataset.

    Args:
        dataset: a name known to ``sbvae.datasets.load`` (``sbvae-data list`` shows them).
        dataset_options: keyword options for that dataset (``path``, ``holdout``, ``color_bins``, ...).
        image_size: side of the square images, in pixels.
        batch_size: images per step and per process (the paper: 16 for VAEs, 32 for FactorVAE).
        steps_per_epoch: training batches between validations / checkpoints.
        val_size: number of validation images (a fixed set, drawn once from ``val_seed``).
        seed: seed of the training stream (mixed with the rank and the step); default: the run's
            ``seed_everything``, so replicas of a seed sweep see independent data.
        val_seed: seed of the validation and test sets; fixed by default so that every run of a sweep is
            validated on the same images.
    """

    def __init__(
        self,
        dataset: str = "colored-sprites",
        dataset_options: dict[str, Any] | None = None,
        image_size: int = 64,
        batch_size: int = 16,
        steps_per_epoch: int = 1000,
        val_size: int = 1024,
        seed: int | None = None,
        val_seed: int = 12345,
    ):
        super().__init__()
        if seed is None:  # follow seed_everything, so a seed sweep also varies the data stream
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        for name, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch), ("val_size", val_size)):
            if value < 1:
                raise SBVAEError(f"data.{name} must be a positive integer, got {value}.")
        if seed < 0 or val_seed < 0:
            raise SBVAEError(f"data.seed and data.val_seed must be >= 0, got {seed} and {val_seed}.")
        self.save_hyperparameters()
        self.hparams.seed = seed  # the checkpoint records the seed actually used
        self.data = load(dataset, image_size=image_size, **(dataset_options or {}))
        self._render_generators: dict[torch.device, torch.Generator] = {}
        self._eval_images: dict[tuple, torch.Tensor] = {}  # (device, *row numbers) -> images

    @property
    def channels(self) -> int:
        return self.data.channels

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _train_seed(self) -> int:
        step = self.trainer.global_step if self.trainer is not None else 0
        return stream_seed(_FACTORS, self.hparams.seed, self._rank(), step)

    def train_dataloader(self) -> DataLoader:
        stream = FactorStream(self.data, self.hparams.batch_size, self.hparams.steps_per_epoch, self._train_seed)
        return DataLoader(stream, batch_size=None)

    def validation_factors(self, purpose: int = 0) -> torch.Tensor:
        """A fixed evaluation set as factor indices (the same on every run and process count).

        ``purpose`` 0 is the validation set, 1 the test set: both come from ``val_seed`` but never overlap in stream.
        """
        generator = torch.Generator().manual_seed(stream_seed(_EVAL_FACTORS, self.hparams.val_seed, purpose))
        return self.data.sample_factors(self.hparams.val_size, generator)

    def _shard(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _evaluation_loader(self, purpose: int) -> DataLoader:
        factors = self.validation_factors(purpose)
        rows = EvaluationRows(factors, purpose * len(factors), self.hparams.batch_size, self._shard)
        return DataLoader(rows, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(0)

    def test_dataloader(self) -> DataLoader:
        """A held-out set of the same size as validation, drawn from a separate stream."""
        return self._evaluation_loader(1)

    def render(self, factors: torch.Tensor) -> torch.Tensor:
        """Training images for ``factors`` on their device, continuous factors from a per-device stream."""
        device = factors.device
        if device not in self._render_generators:
            self._render_generators[device] = torch.Generator(device=device).manual_seed(
                stream_seed(_RENDER, self.hparams.seed, self._rank())
            )
        return self.data.render(factors, self._render_generators[device])

    def render_fixed(self, factors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Evaluation images: row i's continuous factors (colour) come from a generator seeded by i alone.

        So an evaluation image never depends on the batch size, the process count or the epoch.
        """
        device = factors.device
        key = (str(device), *rows.tolist())  # the same batches recur every epoch: render them once
        if key in self._eval_images:
            return self._eval_images[key]
        images = []
        for i, row in enumerate(rows.tolist()):
            generator = torch.Generator(device=device).manual_seed(stream_seed(_EVAL_RENDER, self.hparams.val_seed, row))
            images.append(self.data.render(factors[i : i + 1], generator))
        self._eval_images[key] = torch.cat(images)
        return self._eval_images[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches become images; evaluation batches become (images, row numbers)."""
        if isinstance(batch, (list, tuple)):
            factors, rows = batch
            return self.render_fixed(factors, rows), rows
        return self.render(batch)
