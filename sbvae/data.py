"""LightningDataModule over a GroundTruthData: every pixel is rendered on the model's device.

Training batches are drawn inside the training step from keyed streams
(``training_batch``), so nothing crosses from the CPU per step and a resumed
or replicated run sees exactly the data of the run it continues or copies.
The evaluation loaders yield factor indices and row numbers (a few hundred
bytes a batch), rendered in ``on_after_batch_transfer``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sbvae import keyed
from sbvae.datasets import load
from sbvae.errors import SBVAEError

EVALUATION_DRAWS = 20  # rounds of draws for an evaluation set before its half of the factor space counts as empty


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixed from keys such as (purpose, seed, set), for the CPU generator of a fixed set."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def evaluation_set(data, factors: torch.Tensor) -> torch.Tensor:
    """Long [n]: 0 if factor row i may be drawn for validation, 1 if for test.

    A hash of the row's canonical factors, so the two sets never share a factor combination (nor an image
    that two combinations render alike, as dSprites' orientations 0 and 2 pi), and each is uniform over its
    half of the factor space.
    """
    rows = data.canonical_factors(factors)
    return keyed.key(keyed.EVAL_SPLIT, *rows.unbind(1)) & 1


class StepTicks(IterableDataset):
    """``steps`` placeholder batches per epoch: the model draws each training batch itself.

    The images of step s are a function of (seed, rank, s) alone (``GroundTruthDataModule.training_batch``),
    rendered on the device inside the training step, so the loader carries nothing.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield torch.empty(0)


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
    ):  # pragma: no mutate block (save_hyperparameters reads this frame, which mutmut would wrap)
        super().__init__()
        if seed is None:  # follow seed_everything, so a seed sweep also varies the data stream
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        for name, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch), ("val_size", val_size)):
            if value < 1:
                raise SBVAEError(f"data.{name} must be a positive integer, got {value}.")
        if seed < 0 or val_seed < 0:
            raise SBVAEError(f"data.seed and data.val_seed must be >= 0, got {seed} and {val_seed}.")
        if "image_size" in (dataset_options or {}):
            raise SBVAEError(
                "image_size is data.image_size, not a dataset option: the model is built for one size, so "
                "a checkpoint is scored at the size it was trained at."
            )
        self.save_hyperparameters()
        self.hparams.seed = seed  # the checkpoint records the seed actually used
        self.data = load(dataset, image_size=image_size, **(dataset_options or {}))
        self._eval_images: dict[tuple, torch.Tensor] = {}  # (device, *row numbers) -> images

    @property
    def channels(self) -> int:
        return self.data.channels

    def train_dataloader(self) -> DataLoader:
        return DataLoader(StepTicks(self.hparams.steps_per_epoch), batch_size=None)

    def training_batch(self, seed, rank: int, step, device: torch.device) -> torch.Tensor:
        """The training images of one step: factors and colour from streams keyed by (seed, rank, step).

        ``seed`` may be a tensor of R replica seeds: the batch is then R x batch_size images, chunk k
        being what the single run with seed k draws.  ``step`` may be a device tensor (CUDA graphs), or a
        1-D tensor of K steps: K batches per seed, seed-major (``keyed.stream``).
        """
        # An int seed stays a kernel argument: no host-to-device copy inside a captured step.
        step = step if isinstance(step, torch.Tensor) else torch.tensor(step, device=device)
        factor_stream = keyed.stream(keyed.FACTORS, seed, rank, step)
        factors = self.data.sample_factors(len(factor_stream.keys) * self.hparams.batch_size, factor_stream)
        return self.data.render(factors, keyed.stream(keyed.RENDER, seed, rank, step))

    def validation_factors(self, purpose: int = 0) -> torch.Tensor:
        """A fixed evaluation set as factor indices (the same on every run and process count).

        ``purpose`` 0 is the validation set, 1 the test set: uniform draws from ``val_seed`` restricted to the
        combinations ``evaluation_set`` gives that purpose, so no test row repeats a validation one.
        """
        generator = torch.Generator().manual_seed(stream_seed(keyed.EVAL_FACTORS, self.hparams.val_seed, purpose))
        wanted, kept, count = self.hparams.val_size, [], 0
        for _ in range(EVALUATION_DRAWS):
            draw = self.data.sample_factors(2 * (wanted - count) + 64, generator)  # about half are kept
            draw = draw[evaluation_set(self.data, draw) == purpose]
            kept.append(draw)
            count += len(draw)
            if count >= wanted:
                return torch.cat(kept)[:wanted]
        raise SBVAEError(
            f"dataset {self.hparams.dataset!r} has too few factor combinations to split them between validation "
            "and test; use a dataset (or dataset_options) with more of them."
        )

    def _shard(self) -> tuple[int, int]:
        """(rank, world) of the evaluation rows: the strategy's sampler arguments, so a replica-parallel run,
        whose processes each evaluate their own replicas, gives every process every row."""
        if self.trainer is None:
            return 0, 1
        sampler = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) or {}
        return sampler.get("rank", 0), sampler.get("num_replicas", 1)

    def _evaluation_loader(self, purpose: int) -> DataLoader:
        factors = self.validation_factors(purpose)
        rows = EvaluationRows(factors, purpose * len(factors), self.hparams.batch_size, self._shard)
        return DataLoader(rows, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(0)

    def test_dataloader(self) -> DataLoader:
        """A held-out set of the same size as validation, with none of its factor combinations."""
        return self._evaluation_loader(1)

    def render_fixed(self, factors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Evaluation images: row i's continuous factors (colour) come from a stream keyed by i alone.

        So an evaluation image never depends on the batch size, the process count or the epoch.
        """
        device = factors.device
        key = (str(device), *rows.tolist())  # the same batches recur every epoch: render them once
        if key not in self._eval_images:
            row_keys = keyed.key(keyed.EVAL_RENDER, self.hparams.val_seed, rows.to(device))
            self._eval_images[key] = self.data.render(factors, keyed.KeyedRandom(row_keys))
        return self._eval_images[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Evaluation batches become (images, row numbers); training batches are placeholders."""
        if isinstance(batch, (list, tuple)):
            factors, rows = batch
            return self.render_fixed(factors, rows), rows
        return batch
