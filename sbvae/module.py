"""LightningModules: a conv encoder paired with a DeConv, CoordConv or Spatial Broadcast decoder.

``VAE`` is the VAE / beta-VAE family (automatic optimisation); ``FactorVAE``
(in ``sbvae.factorvae``) adds a total-correlation discriminator.  All
constructor arguments are plain values, so they are saved in every checkpoint
and ``sbvae-eval`` rebuilds the model from the checkpoint alone.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any, Literal

import lightning as L
import torch

from sbvae import keyed, objectives, runs
from sbvae.engine import Engine
from sbvae.errors import DivergenceError, SBVAEError
from sbvae.metrics.latents_used import count_used
from sbvae.nets import DECODERS, ConvEncoder
from sbvae.trainer_step import counted_step, engine_for

DecoderName = Literal["spatial_broadcast", "deconv", "coordconv"]


def _build(cls, fixed: dict[str, Any], options: dict[str, Any] | None, where: str):
    """Construct ``cls(**fixed, **options)``, refusing unknown or duplicated option names by name."""
    options = dict(options or {})
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SBVAEError(
            f"unknown {where} option(s) {unknown} for {cls.__name__}; valid options: {sorted(accepted - set(fixed))}."
        )
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise SBVAEError(f"{where} option(s) {clash} are set by the model itself; set them on the model instead.")
    try:
        return cls(**fixed, **options)
    except ValueError as error:  # the networks' own one-sentence checks (impossible image size, ...)
        raise SBVAEError(str(error)) from error


class VAE(L.LightningModule):
    """beta-VAE (beta = 1: the plain VAE) with the paper's networks and optimiser.

    Args:
        decoder: "spatial_broadcast" (the paper's SBD), "deconv" or "coordconv".
        latent_dim: number of latents (the paper: 10).
        image_size: image side in pixels; linked to ``data.image_size`` by ``sbvae-train``.
        channels: image channels; linked to the dataset's by ``sbvae-train``.
        encoder_options: extra ``ConvEncoder`` arguments (e.g. ``channels: [32, 32, 64, 64]``).
        decoder_options: extra decoder arguments (depth, ``padding: valid``, ``mlp_layers``,
            ``upscales``, ``shuffle_coords``, ...; see ``sbvae.nets``).
        likelihood: "bernoulli" on logits (paper default) or "gaussian" with fixed variance.
        gaussian_variance: the fixed variance of the Gaussian likelihood (paper: 0.3).
        beta: weight of the KL term.
        lr: Adam learning rate (paper: 3e-4).
        max_loss: a loss above this (nats per image) counts as divergence, like a nan.
        step_mode: how ``sbvae.engine`` runs a training step: "graph" captures the whole step in a CUDA
            graph (one process on CUDA), "eager" runs it op by op (CPU, DDP, debugging); "auto" picks
            graph where it works.  Both compute the same step.
        channels_last: train in the channels-last memory format; None (default) picks it on the CPU,
            where it measured faster (``benchmarks/throughput.py``), and not elsewhere until measured.
    """

    # Summed for backward and checked for divergence (FactorVAE adds its discriminator's loss).
    backward_terms: tuple[str, ...] = ("loss",)
    # Whether ``loss_terms`` takes ``step`` [B], the training step counter per row (an annealed objective).
    uses_step: bool = False

    def __init__(
        self,
        decoder: DecoderName = "spatial_broadcast",
        latent_dim: int = 10,
        image_size: int = 64,
        channels: int = 3,
        encoder_options: dict[str, Any] | None = None,
        decoder_options: dict[str, Any] | None = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        gaussian_variance: float = 0.3,
        beta: float = 1.0,
        lr: float = 3e-4,
        max_loss: float = 1e6,
        step_mode: Literal["auto", "graph", "eager"] = "auto",
        channels_last: bool | None = None,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise SBVAEError(f"unknown decoder {decoder!r}: choose one of {sorted(DECODERS)}.")
        if likelihood not in objectives.LIKELIHOODS:
            raise SBVAEError(f"unknown likelihood {likelihood!r}: choose one of {objectives.LIKELIHOODS}.")
        limits = (
            ("beta", beta, beta >= 0),
            ("lr", lr, lr > 0),
            ("gaussian_variance", gaussian_variance, gaussian_variance > 0),
        )
        bad = [f"{name} {value}" for name, value, ok in limits if not ok]
        if bad:
            raise SBVAEError(
                f"model.init_args: got {', '.join(bad)}; beta must be >= 0, and lr and gaussian_variance > 0."
            )
        if latent_dim < 1:
            raise SBVAEError(f"latent_dim must be at least 1, got {latent_dim}; the paper uses 10.")
        if step_mode not in ("auto", "graph", "eager"):
            raise SBVAEError(f"unknown step_mode {step_mode!r}: choose auto, graph or eager.")
        self.save_hyperparameters()
        self.encoder = _build(
            ConvEncoder,
            dict(in_channels=channels, image_size=image_size, latent_dim=latent_dim),
            encoder_options,
            "encoder",
        )
        self.decoder = _build(
            DECODERS[decoder],
            dict(latent_dim=latent_dim, out_channels=channels, image_size=image_size),
            decoder_options,
            "decoder",
        )
        self._posterior_std_sum: torch.Tensor | None = None
        self._posterior_count = 0
        self.engine: Engine | None = None
        self.automatic_optimization = False  # the engine runs backward and the optimiser steps

    # -- the model ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each [B, latent_dim]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: logits (bernoulli) or the mean image (gaussian)."""
        return self.decoder(z)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The representation scored by the metrics: the posterior mean."""
        return self.encode(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean into an image in [0, 1]."""
        return objectives.mean_image(self.decode(self.represent(x)), self.hparams.likelihood)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.represent(x)

    def posterior_terms(self, x: torch.Tensor, noise: torch.Tensor) -> objectives.PosteriorTerms:
        """NLL [B], KL [B], the latent sample z and the posterior's mean and log-variance, for one batch.

        ``noise`` (standard normal, [B, latent_dim]) is the posterior sample's noise.
        The posterior and the losses are kept in float32 under mixed precision: the KL's
        exp(logvar) - 1 - logvar cancels badly in bfloat16.
        """
        expected = (self.hparams.channels, self.hparams.image_size, self.hparams.image_size)
        if tuple(x.shape[1:]) != expected:
            raise SBVAEError(
                f"the model expects images of shape {expected}, got {tuple(x.shape[1:])}: "
                "set data.image_size (the model follows it) or use a dataset with matching channels."
            )
        mean, logvar = (t.float() for t in self.encode(x))
        z = objectives.reparameterize(mean, logvar, noise)
        output = self.decode(z).float()
        nll = objectives.reconstruction_nll(output, x.float(), self.hparams.likelihood, self.hparams.gaussian_variance)
        return objectives.PosteriorTerms(nll, objectives.gaussian_kl(mean, logvar), z, mean, logvar)

    def per_image_terms(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """NLL [B], KL [B], the latent sample z and the log-variance (``posterior_terms`` without the mean)."""
        terms = self.posterior_terms(x, noise)
        return terms.nll, terms.kl, terms.z, terms.logvar

    def evaluation_noise(self, rows: torch.Tensor) -> torch.Tensor:
        """The posterior sample's noise for evaluation rows: a function of the row number alone.

        Validation ELBOs are then exactly repeatable and independent of the batch size and process
        count, and evaluating never consumes the training run's random numbers.
        """
        rows = rows.to(self.device)
        return keyed.KeyedRandom(keyed.key(keyed.EVAL_POSTERIOR, rows)).normal((len(rows), self.hparams.latent_dim))

    def loss_terms(self, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training objective and what is logged of it, batch means in nats per image.

        ``loss`` is optimised; ``elbo`` (NLL + KL), ``nll`` and ``kl`` are reported.  The one place
        the objective is assembled: training, the fast path, replicas and the benchmark call it.
        """
        return self.objective(self.posterior_terms(x, noise))

    def objective(self, terms: objectives.PosteriorTerms, step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The batch-mean terms of this model's objective (beta-VAE here); ``step``: the steps done before
        this one, for objectives that change during training (``uses_step``)."""
        return vars(objectives.beta_vae_loss(terms.nll, terms.kl, self.hparams.beta))

    def step_randomness(self, batch_size: int, draw) -> dict[str, torch.Tensor]:
        """The random inputs of ``loss_terms`` for one step, from ``draw(purpose) -> KeyedRandom``."""
        return {"noise": draw(keyed.POSTERIOR).normal((batch_size, self.hparams.latent_dim))}

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        refuse_fp16(self.trainer)

    def on_train_start(self) -> None:
        # After a resume has restored weights and optimiser state: the engine captures those tensors.
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "training_batch"):
            raise SBVAEError(
                "sbvae models train on an sbvae GroundTruthDataModule (the `data:` section of the config)."
            )
        self._channels_last = wants_channels_last(self.hparams.channels_last, self.device)
        if self._channels_last:
            self.to(memory_format=torch.channels_last)
        self.engine = engine_for(
            self,
            self.hparams.step_mode,
            lambda step: self._training_images(dm, step),
            seed=dm.hparams.seed,
            rank=self.trainer.global_rank,
            backward=self.manual_backward if self.trainer.world_size > 1 else None,
        )

    def _training_images(self, dm, step: torch.Tensor) -> torch.Tensor:
        x = dm.training_batch(self.engine.seed, self.engine.rank, step, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def _has_last_checkpoint(self) -> bool:
        # The logger's own folder, not trainer.log_dir: that is a collective, and one process may be here alone.
        folder = getattr(self._trainer.logger, "log_dir", None) if self._trainer is not None else None
        return bool(folder) and os.path.isfile(os.path.join(folder, runs.CHECKPOINTS, runs.LAST_CHECKPOINT))

    def sync_divergence(self) -> None:
        """Stop with DivergenceError if any step so far diverged (reads one flag from the device).

        Such a step never updated the weights, and the engine froze them from then on, so the model
        (and every checkpoint) stays finite.
        """
        found = self.engine.first_bad_step() if self.engine is not None else None
        if found is None:
            return
        step, values = found
        guarded = {k: v for k, v in values.items() if k in self.backward_terms}
        bad = {k: v for k, v in guarded.items() if not (math.isfinite(v) and v <= self.hparams.max_loss)}
        what = ", ".join(f"{k} = {v:.4g}" for k, v in (bad or guarded).items())
        kept = (
            "the last good checkpoint is kept: resume from it"
            if self._has_last_checkpoint()
            else "no checkpoint was written before it: train again"
        )
        raise DivergenceError(
            f"training diverged at step {step} ({what}); {kept} "
            "with a lower learning rate, another seed, or --model.init_args.likelihood gaussian (the paper's advice for stability).",
            step=step,
            value=next(iter(bad.values()), float("nan")),
        )

    def training_step(self, batch, batch_idx: int) -> None:
        terms = counted_step(self, self.engine)
        trainer = self.trainer
        done = self.global_step
        if done % trainer.log_every_n_steps == 0:
            # The steps Lightning writes: a self.log call costs about a millisecond of host time, more
            # than a whole graphed step, so the others are not logged at all.
            batch_size = trainer.datamodule.hparams.batch_size
            for name, value in terms.items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)
        if (
            done % trainer.log_every_n_steps == 0
            or batch_idx + 1 == trainer.num_training_batches
            or (trainer.max_steps > 0 and done >= trainer.max_steps)
        ):
            self.sync_divergence()

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Epoch means of the evaluation terms, reduced across processes."""
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)

    def _evaluation_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, rows = batch
        terms = self.posterior_terms(x, self.evaluation_noise(rows))
        step = torch.tensor(self.global_step, device=x.device)  # an annealed objective at the steps trained
        self.log_terms(stage, self.objective(terms, step), x.shape[0])
        std_sum = torch.exp(0.5 * terms.logvar.double()).sum(0)
        self._posterior_std_sum = std_sum if self._posterior_std_sum is None else self._posterior_std_sum + std_sum
        self._posterior_count += x.shape[0]

    def _log_latents_used(self, stage: str) -> None:
        """The paper's "latents used": dimensions whose mean posterior std over the data is below 0.5."""
        if self._posterior_std_sum is None:
            return
        count = torch.tensor(float(self._posterior_count), device=self._posterior_std_sum.device, dtype=torch.float64)
        std_sum, count = self.all_gather(self._posterior_std_sum), self.all_gather(count)
        if std_sum.ndim == 2:  # gathered from several processes
            std_sum, count = std_sum.sum(0), count.sum()
        used = torch.tensor(float(count_used(std_sum / count)), device=std_sum.device)
        self.log(f"{stage}/latents_used", used, sync_dist=True)  # already identical on every process
        self._posterior_std_sum, self._posterior_count = None, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_latents_used("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_latents_used("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # sbvae-eval rebuilds the right class from the checkpoint alone.
        checkpoint["sbvae_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), self.device, lr=self.hparams.lr)


def refuse_fp16(trainer) -> None:
    """The engine runs its own autocast and Adam, with no loss scaler: fp16 would train unscaled (or in fp32)."""
    if str(trainer.precision).startswith("16"):
        raise SBVAEError(
            f"sbvae's training step does not support precision {trainer.precision!r} (fp16 needs loss "
            "scaling, which the step does not do); use --trainer.precision bf16-mixed or 32-true."
        )


def wants_channels_last(setting: bool | None, device: torch.device) -> bool:
    """The ``channels_last`` argument resolved for a device: None means yes on the CPU only."""
    return device.type == "cpu" if setting is None else bool(setting)


def adam(params, device: torch.device, **options) -> torch.optim.Adam:
    """Adam whose state lives on the device (capturable) on CUDA, where the engine steps it inside a CUDA
    graph; on the CPU the fused kernel, one call for all parameters instead of several per tensor."""
    if torch.device(device).type == "cuda":
        return torch.optim.Adam(params, capturable=True, **options)
    return torch.optim.Adam(params, fused=True, **options)
