"""Lightning callbacks: pictures in TensorBoard and a run-status file that sweeps can count."""
from __future__ import annotations

import json
import os
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from sbvae.runs import atomic_path
from sbvae.errors import DivergenceError
from sbvae.visualize import latent_order, reconstruction_grid, traversal_grid


def tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None when there is none."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageLogger(L.Callback):
    """Logs ``reconstructions`` and ``traversals/seed_i`` every ``every_n_steps`` and at the end of fit.

    The images are a fixed slice of the validation set, so successive pictures are comparable.

    Args:
        every_n_steps: interval in optimiser steps (0: only at the end of fit).
        num_images: images in the reconstruction grid.
        num_seeds: seed images for traversals (one grid each).
        steps: columns of a traversal (values from -limit to +limit).
        limit: traversal range around zero (paper: 2).
        order_images: images used to rank latents by mean posterior variance.
    """

    def __init__(self, every_n_steps: int = 1000, num_images: int = 8, num_seeds: int = 2, steps: int = 9,
                 limit: float = 2.0, order_images: int = 256):
        self.every_n_steps, self.num_images, self.num_seeds = every_n_steps, num_images, num_seeds
        self.steps, self.limit, self.order_images = steps, limit, order_images
        self._images: torch.Tensor | None = None
        self._logged_step = -1

    def _fixed_images(self, trainer: L.Trainer, device: torch.device) -> torch.Tensor:
        if self._images is None or self._images.device != device:
            dm = trainer.datamodule
            n = max(self.num_images, self.num_seeds, self.order_images)
            factors = dm.validation_factors()[:n].to(device)
            self._images = dm.render_fixed(factors, torch.arange(len(factors)))
        return self._images

    @rank_zero_only
    def log_pictures(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or trainer.datamodule is None or trainer.global_step == self._logged_step:
            return
        self._logged_step = trainer.global_step
        was_training = module.training
        module.eval()
        try:
            x = self._fixed_images(trainer, module.device)
            step = trainer.global_step
            writer.add_image("reconstructions", reconstruction_grid(module, x[: self.num_images]), step)
            order = latent_order(module, x[: self.order_images])
            for i in range(self.num_seeds):
                grid = traversal_grid(module, x[i], order, steps=self.steps, limit=self.limit)
                writer.add_image(f"traversals/seed_{i}", grid, step)
            writer.flush()
        finally:
            module.train(was_training)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_pictures(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self.log_pictures(trainer, module)


class LastCheckpoint(L.Callback):
    """Keeps ``checkpoints/last.ckpt`` equal to the latest state: after every validation and at the end of fit.

    (Lightning's ``save_last`` only writes when a monitored checkpoint is written, so after a validation
    that did not improve, "last" would be stale.)  The file is written under a temporary name and renamed,
    so an interrupted save never leaves a half-written ``last.ckpt``; a failed or diverged run keeps the
    previous one untouched.
    """

    FILENAME = "last.ckpt"

    def _save(self, trainer: L.Trainer) -> None:
        folder = os.path.join(trainer.log_dir, "checkpoints")  # log_dir is a collective: every process calls it
        partial = os.path.join(folder, f".{self.FILENAME}.partial")
        trainer.save_checkpoint(partial)  # process 0 writes, the others wait
        if trainer.is_global_zero:
            os.replace(partial, os.path.join(folder, self.FILENAME))
        trainer.strategy.barrier("last-checkpoint")

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self._save(trainer)


class RunStatus(L.Callback):
    """Writes ``status.json`` in the run's log folder: running, completed, diverged or failed.

    Sweeps count diverged runs from it (the paper reports ~15% of FactorVAE seeds diverging).
    """

    def _write(self, trainer: L.Trainer, status: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        # The logger's folder, not trainer.log_dir: that one is a collective broadcast, and this runs
        # on process 0 alone (and in on_exception, when other processes may be gone).
        folder = trainer.loggers[0].log_dir if trainer.loggers and trainer.loggers[0].log_dir else trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        record = {"status": status, "global_step": trainer.global_step, "time": time.time(), **extra}
        with atomic_path(os.path.join(folder, "status.json")) as tmp, open(tmp, "w") as f:
            json.dump(record, f, indent=2)

    def on_fit_start(self, trainer, module) -> None:
        self._write(trainer, "running")

    def on_fit_end(self, trainer, module) -> None:
        self._write(trainer, "completed")

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if isinstance(exception, DivergenceError):
            self._write(trainer, "diverged", step=exception.step, value=exception.value, message=str(exception))
        elif isinstance(exception, KeyboardInterrupt):
            self._write(trainer, "interrupted")
        else:
            self._write(trainer, "failed", message=f"{type(exception).__name__}: {exception}")


class MetricsCallback(L.Callback):
    """Computes disentanglement metrics every ``every_n_steps`` (and at the end of fit) and logs ``metrics/<name>``.

    Runs on the global-zero process only and writes straight to TensorBoard, so DDP ranks never wait on it.

    Args:
        metrics: names from ``sbvae.evaluation.METRICS`` (e.g. ["mig", "factor_vae"]).
        every_n_steps: interval in optimiser steps (0: only at the end of fit).
        preset: "quick" (small sizes, cheap) or "paper" (disentanglement_lib's sizes).
        seed: the evaluation seed (the same points every time, so curves are comparable).
    """

    def __init__(self, metrics: list[str] = ["mig"], every_n_steps: int = 10000, preset: str = "quick", seed: int = 0):
        from sbvae.evaluation import PRESETS, parse_metrics

        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}.")
        self.metrics, self.every_n_steps, self.preset, self.seed = parse_metrics(metrics), every_n_steps, preset, seed
        self._scored_step = -1

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from sbvae.evaluation import scalars, score

        if trainer.global_step == self._scored_step:  # the last step was already scored
            return
        self._scored_step = trainer.global_step
        writer = tensorboard(trainer)
        results = score(module, trainer.datamodule.data, self.metrics, self.preset, self.seed, module.device)
        if writer is not None:
            for tag, value in scalars(results).items():
                writer.add_scalar(f"metrics/{tag}", value, trainer.global_step)
            writer.flush()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.evaluate(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self.evaluate(trainer, module)
