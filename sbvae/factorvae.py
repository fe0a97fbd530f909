"""FactorVAE (Kim & Mnih 2018): a VAE plus gamma x a discriminator's estimate of total correlation.

One forward pass and one backward pass per step, with the two gradient paths
separated by construction rather than by zeroing gradients afterwards:

* the VAE loss calls the discriminator with *detached* copies of its weights
  (``torch.func.functional_call``), so the TC penalty trains the encoder but
  never the discriminator;
* the discriminator loss sees only ``z.detach()`` and its permutation, so it
  trains the discriminator but never the encoder or decoder.

Both optimizers then step on gradients from the same batch (``sbvae.engine`` runs the step), as in
disentanglement_lib's FactorVAE.  A single backward also keeps DDP simple:
every parameter receives its gradient exactly once per step, and nothing is
modified in place between two backward passes (the usual
"modified by an inplace operation" failure of two-pass ports).

Under DDP each process permutes its own batch: the permuted samples come from
the product of the per-process batch marginals, which is an unbiased sample of
prod_j q(z_j) because every process draws from the same data distribution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from sbvae import keyed, objectives
from sbvae.module import VAE, adam
from sbvae.nets import Discriminator


class FactorVAE(VAE):
    """VAE + gamma * TC, the TC estimated by an MLP discriminator on q(z) vs. its dimension-wise permutation.

    Paper settings (Spatial Broadcast paper A.2, Kim & Mnih 2018): beta 1, gamma 35, Adam lr 1e-4 for the
    VAE (betas 0.9, 0.999) and 2e-5 for the discriminator (betas 0.5, 0.9), batch 32, Table 2 networks.

    Args (beyond ``VAE``'s, which pass through ``vae_options``):
        lr: the VAE's Adam learning rate (FactorVAE's default is lower than the VAE's).
        gamma: weight of the total-correlation penalty.
        disc_lr: discriminator learning rate.
        disc_betas: discriminator Adam betas.
        disc_hidden, disc_layers: discriminator width and number of hidden layers (Kim & Mnih: 1000 x 6).
    """

    backward_terms = ("loss", "disc_loss")

    def __init__(
        self,
        lr: float = 1e-4,
        gamma: float = 35.0,
        disc_lr: float = 2e-5,
        disc_betas: tuple[float, float] = (0.5, 0.9),
        disc_hidden: int = 1000,
        disc_layers: int = 6,
        **vae_options: Any,
    ):  # pragma: no mutate block (save_hyperparameters reads this frame, which mutmut would wrap)
        super().__init__(lr=lr, **vae_options)
        self.save_hyperparameters()
        self.discriminator = Discriminator(latent_dim=self.hparams.latent_dim, hidden=disc_hidden, layers=disc_layers)

    def frozen_discriminator(self, z: torch.Tensor) -> torch.Tensor:
        """Discriminator logits whose gradient reaches ``z`` but not the discriminator's weights."""
        weights = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, weights, (z,))

    def step_randomness(self, batch_size: int, draw) -> dict[str, torch.Tensor]:
        return {
            **super().step_randomness(batch_size, draw),
            "permutation": draw(keyed.PERMUTATION).rand((batch_size, self.hparams.latent_dim)),
        }

    def loss_terms(self, x: torch.Tensor, noise: torch.Tensor, permutation: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` (beta-VAE + gamma TC: to the encoder and decoder), ``disc_loss`` (to the discriminator) and
        the logged parts.  ``permutation``: uniform [B, latent_dim] keys that order each dimension's shuffle."""
        nll, kl, z, _ = self.per_image_terms(x, noise)
        terms = objectives.beta_vae_loss(nll, kl, self.hparams.beta)
        tc = objectives.total_correlation_estimate(self.frozen_discriminator(z))
        z_joint = z.detach()
        z_permuted = objectives.permute_dims(z_joint, permutation)
        logits_joint, logits_permuted = self.discriminator(z_joint), self.discriminator(z_permuted)
        correct = torch.cat([logits_joint.argmax(1) == 0, logits_permuted.argmax(1) == 1])
        return {
            "loss": terms.loss + self.hparams.gamma * tc,
            "elbo": terms.elbo,
            "nll": terms.nll,
            "kl": terms.kl,
            "tc": tc,
            "disc_loss": objectives.discriminator_loss(logits_joint, logits_permuted),
            "disc_accuracy": correct.float().mean(),
        }

    def configure_optimizers(self):
        vae_params = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        return (
            adam(vae_params, self.device, lr=self.hparams.lr),
            adam(
                self.discriminator.parameters(),
                self.device,
                lr=self.hparams.disc_lr,
                betas=tuple(self.hparams.disc_betas),
            ),
        )
