"""LightningModules: a conv encoder paired with a DeConv, CoordConv or Spatial Broadcast decoder.

``VAE`` is the VAE / beta-VAE family (automatic optimisation); ``FactorVAE``
(in ``sbvae.factorvae``) adds a total-correlation discriminator.  All
constructor arguments are plain values, so they are saved in every checkpoint
and ``sbvae-eval`` rebuilds the model from the checkpoint alone.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import lightning as L
import torch

from sbvae import objectives
from sbvae.errors import DivergenceError, SBVAEError
from sbvae.metrics.latents_used import count_used
from sbvae.nets import DECODERS, ConvEncoder

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
    """

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
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise SBVAEError(f"unknown decoder {decoder!r}: choose one of {sorted(DECODERS)}.")
        if likelihood not in objectives.LIKELIHOODS:
            raise SBVAEError(f"unknown likelihood {likelihood!r}: choose one of {objectives.LIKELIHOODS}.")
        if beta < 0 or lr <= 0 or gaussian_variance <= 0:
            raise SBVAEError("beta must be >= 0, and lr and gaussian_variance > 0.")
        self.save_hyperparameters()
        self.encoder = _build(
            ConvEncoder, dict(in_channels=channels, image_size=image_size, latent_dim=latent_dim),
            encoder_options, "encoder",
        )
        self.decoder = _build(
            DECODERS[decoder], dict(latent_dim=latent_dim, out_channels=channels, image_size=image_size),
            decoder_options, "decoder",
        )
        self._posterior_std_sum: torch.Tensor | None = None
        self._posterior_count = 0

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

    def per_image_terms(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """NLL [B], KL [B], the latent sample z and the log-variance, for one batch of images.

        ``noise`` (standard normal, [B, latent_dim]) fixes the sample; by default it is drawn afresh.
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
        return nll, objectives.gaussian_kl(mean, logvar), z, logvar

    def evaluation_noise(self, rows: torch.Tensor) -> torch.Tensor:
        """The posterior sample's noise for evaluation rows: a function of the row number alone.

        Validation ELBOs are then exactly repeatable and independent of the batch size and process
        count, and evaluating never consumes the training run's random numbers.
        """
        noise = torch.empty(len(rows), self.hparams.latent_dim)
        for i, row in enumerate(rows.tolist()):
            noise[i] = torch.randn(self.hparams.latent_dim, generator=torch.Generator().manual_seed(int(row)))
        return noise.to(self.device)

    # -- training ----------------------------------------------------------------------------
    def check_divergence(self, **losses: torch.Tensor) -> None:
        """Stop with DivergenceError when any loss is non-finite or above ``max_loss`` on any process.

        It runs before the optimiser step, so the weights (and every checkpoint) stay finite.
        """
        values = {k: float(v.detach()) for k, v in losses.items()}
        bad = {k: v for k, v in values.items() if not math.isfinite(v) or v > self.hparams.max_loss}
        trainer = self._trainer  # None outside a Trainer (direct calls, tests)
        if trainer is not None and trainer.world_size > 1:
            any_bad = trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        else:
            any_bad = bool(bad)
        if any_bad:
            what = ", ".join(f"{k} = {v:.4g}" for k, v in bad.items()) or "a loss on another process"
            step = self.global_step
            raise DivergenceError(
                f"training diverged at step {step} ({what}); the last good checkpoint is kept: resume from it "
                "with a lower learning rate, another seed, or model.likelihood=gaussian (the paper's advice for stability).",
                step=step,
                value=next(iter(bad.values()), float("nan")),
            )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        nll, kl, _, _ = self.per_image_terms(batch)
        terms = objectives.beta_vae_loss(nll, kl, self.hparams.beta)
        self.check_divergence(loss=terms.loss)
        self.log_terms("train", terms, batch.shape[0], prog_bar=True)
        return terms.loss

    def log_terms(self, stage: str, terms: objectives.ELBOTerms, batch_size: int, prog_bar: bool = False) -> None:
        on_step = stage == "train"
        sync = not on_step  # epoch means are reduced across processes; per-step values are rank 0's
        self.log(f"{stage}/loss", terms.loss, prog_bar=prog_bar, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=sync)
        for name in ("elbo", "nll", "kl"):
            self.log(f"{stage}/{name}", getattr(terms, name), on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=sync)

    def _evaluation_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, rows = batch
        nll, kl, _, logvar = self.per_image_terms(x, self.evaluation_noise(rows))
        self.log_terms(stage, objectives.beta_vae_loss(nll, kl, self.hparams.beta), x.shape[0])
        std_sum = torch.exp(0.5 * logvar.double()).sum(0)
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
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
