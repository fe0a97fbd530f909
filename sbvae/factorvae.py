"""FactorVAE (Kim & Mnih 2018): a VAE plus gamma x a discriminator's estimate of total correlation.

One forward pass and one backward pass per step, with the two gradient paths
separated by construction rather than by zeroing gradients afterwards:

* the VAE loss calls the discriminator with *detached* copies of its weights
  (``torch.func.functional_call``), so the TC penalty trains the encoder but
  never the discriminator;
* the discriminator loss sees only ``z.detach()`` and its permutation, so it
  trains the discriminator but never the encoder or decoder.

Both optimizers then step on gradients from the same batch, as in
disentanglement_lib's FactorVAE.  A single backward also keeps DDP simple:
every parameter receives its gradient exactly once per step, and nothing is
modified in place between two backward passes (the usual
"modified by an inplace operation" failure of two-pass ports).

Under DDP each process permutes its own batch: the permuted samples come from
the product of the per-process batch marginals, which is an unbiased sample of
prod_j q(z_j) because every process draws from the same data distribution.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch.func import functional_call

from sbvae import objectives
from sbvae.errors import SBVAEError
from sbvae.module import VAE, DecoderName
from sbvae.nets import Discriminator


class FactorVAE(VAE):
    """VAE + gamma * TC, the TC estimated by an MLP discriminator on q(z) vs. its dimension-wise permutation.

    Paper settings (Spatial Broadcast paper A.2, Kim & Mnih 2018): beta 1, gamma 35, Adam lr 1e-4 for the
    VAE (betas 0.9, 0.999) and 2e-5 for the discriminator (betas 0.5, 0.9), batch 32, Table 2 networks.

    Args (beyond ``VAE``'s):
        gamma: weight of the total-correlation penalty.
        disc_lr: discriminator learning rate.
        disc_betas: discriminator Adam betas.
        disc_hidden, disc_layers: discriminator width and number of hidden layers (Kim & Mnih: 1000 x 6).
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
        lr: float = 1e-4,
        max_loss: float = 1e6,
        gamma: float = 35.0,
        disc_lr: float = 2e-5,
        disc_betas: tuple[float, float] = (0.5, 0.9),
        disc_hidden: int = 1000,
        disc_layers: int = 6,
    ):
        super().__init__(
            decoder=decoder, latent_dim=latent_dim, image_size=image_size, channels=channels,
            encoder_options=encoder_options, decoder_options=decoder_options, likelihood=likelihood,
            gaussian_variance=gaussian_variance, beta=beta, lr=lr, max_loss=max_loss,
        )
        self.save_hyperparameters()
        self.discriminator = Discriminator(latent_dim=latent_dim, hidden=disc_hidden, layers=disc_layers)
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        # The discriminator steps outside the Lightning optimizer wrapper (see training_step); a GradScaler
        # would update its scale between the two optimizers' steps.  bf16 needs no scaler.
        if str(self.trainer.precision).startswith("16"):
            raise SBVAEError(
                f"FactorVAE does not support precision {self.trainer.precision!r} (fp16 loss scaling with two "
                "optimizers); use --trainer.precision bf16-mixed or 32-true."
            )

    def frozen_discriminator(self, z: torch.Tensor) -> torch.Tensor:
        """Discriminator logits whose gradient reaches ``z`` but not the discriminator's weights."""
        weights = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, weights, (z,))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of one step: ``vae_loss`` (to encoder/decoder) and ``disc_loss`` (to the discriminator)."""
        nll, kl, z, _ = self.per_image_terms(x)
        terms = objectives.beta_vae_loss(nll, kl, self.hparams.beta)
        tc = objectives.total_correlation_estimate(self.frozen_discriminator(z))
        z_joint = z.detach()
        z_permuted = objectives.permute_dims(z_joint)
        logits_joint, logits_permuted = self.discriminator(z_joint), self.discriminator(z_permuted)
        disc_loss = objectives.discriminator_loss(logits_joint, logits_permuted)
        correct = torch.cat([logits_joint.argmax(1) == 0, logits_permuted.argmax(1) == 1])
        return {
            "vae_loss": terms.loss + self.hparams.gamma * tc,
            "elbo": terms.elbo, "nll": terms.nll, "kl": terms.kl, "tc": tc,
            "disc_loss": disc_loss, "disc_accuracy": correct.float().mean(),
        }

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_vae, opt_disc = self.optimizers()
        losses = self.losses(batch)
        self.check_divergence(vae_loss=losses["vae_loss"], disc_loss=losses["disc_loss"])
        opt_vae.zero_grad()
        opt_disc.zero_grad()
        self.manual_backward(losses["vae_loss"] + losses["disc_loss"])
        opt_vae.step()
        # Stepped through the strategy (precision plugins apply) but not through the Lightning wrapper,
        # so trainer.global_step counts training iterations, not 2 per iteration: max_steps means steps.
        self.trainer.strategy.optimizer_step(opt_disc.optimizer, closure=lambda: None)
        self.log("train/loss", losses["vae_loss"], prog_bar=True, batch_size=batch.shape[0])
        for name in ("elbo", "nll", "kl", "tc", "disc_loss", "disc_accuracy"):
            self.log(f"train/{name}", losses[name], batch_size=batch.shape[0])

    def configure_optimizers(self):
        vae_params = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        return (
            torch.optim.Adam(vae_params, lr=self.hparams.lr),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.disc_lr, betas=tuple(self.hparams.disc_betas)),
        )
