"""disentanglement_lib's other VAE objectives on sbvae's networks: beta-TCVAE, DIP-VAE-I/II and AnnealedVAE.

Each is the ``VAE`` with another ``objective`` (the plain functions in ``sbvae.objectives``), so the
engine, replicas, checkpoints and metrics treat them exactly as the beta-VAE.  Their defaults are the
middle of Locatello et al. (2019)'s grid, the study disentanglement_lib ran.
"""

from __future__ import annotations

from typing import Any

import torch

from sbvae import objectives
from sbvae.errors import SBVAEError
from sbvae.module import VAE


class BetaTCVAE(VAE):
    """beta-TCVAE (Chen et al. 2018): the ELBO plus (beta - 1) x the minibatch-weighted total correlation.

    Args (beyond ``VAE``'s): beta: the TC weight (Locatello et al.'s grid: 1, 2, 4, 6, 8, 10).
    """

    def __init__(self, beta: float = 6.0, **vae_options: Any):  # pragma: no mutate block (save_hyperparameters)
        super().__init__(beta=beta, **vae_options)

    def objective(self, terms: objectives.PosteriorTerms, step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return objectives.beta_tcvae_loss(terms.nll, terms.kl, terms.z, terms.mean, terms.logvar, self.hparams.beta)


DIP_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}  # disentanglement_lib's lambda_d_factor for each kind


class DIPVAE(VAE):
    """DIP-VAE (Kumar et al. 2018): the ELBO plus a penalty pulling a covariance of the codes towards I.

    Args (beyond ``VAE``'s):
        kind: "i" (the covariance of the encoder means) or "ii" (of the aggregate posterior).
        lambda_od: weight of the off-diagonal entries (Locatello et al.'s grid: 1, 2, 5, 10, 20, 50).
        lambda_d: weight of the diagonal's distance from 1; None takes disentanglement_lib's
            10 x lambda_od for DIP-VAE-I and lambda_od for DIP-VAE-II.
    """

    def __init__(
        self, kind: str = "i", lambda_od: float = 10.0, lambda_d: float | None = None, **vae_options: Any
    ):  # pragma: no mutate block (save_hyperparameters)
        if kind not in DIP_LAMBDA_D_FACTOR:
            raise SBVAEError(f"unknown DIP-VAE kind {kind!r}: choose model.init_args.kind i or ii.")
        if lambda_od < 0 or (lambda_d is not None and lambda_d < 0):
            raise SBVAEError("DIP-VAE's lambda_od and lambda_d must be >= 0.")
        super().__init__(**vae_options)
        self.save_hyperparameters()

    @property
    def lambda_d(self) -> float:
        chosen = self.hparams.lambda_d
        return DIP_LAMBDA_D_FACTOR[self.hparams.kind] * self.hparams.lambda_od if chosen is None else chosen

    def objective(self, terms: objectives.PosteriorTerms, step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return objectives.dip_vae_loss(
            terms.nll, terms.kl, terms.mean, terms.logvar, self.hparams.kind, self.hparams.lambda_od, self.lambda_d
        )


class AnnealedVAE(VAE):
    """AnnealedVAE (Burgess et al. 2018): NLL + gamma |KL - C|, C rising linearly to c_max.

    C follows the training step's own counter (the engine passes it), so a resumed run anneals exactly
    as an unbroken one, and every replica of a replica set at the same C.

    Args (beyond ``VAE``'s):
        gamma: weight of the capacity penalty (Locatello et al.: 1000).
        c_max: the final capacity in nats (their grid: 5, 10, 25, 50, 75, 100).
        iteration_threshold: steps over which C rises from 0 to c_max (theirs: 100,000).
    """

    uses_step = True

    def __init__(
        self, gamma: float = 1000.0, c_max: float = 25.0, iteration_threshold: int = 100_000, **vae_options: Any
    ):  # pragma: no mutate block (save_hyperparameters)
        if gamma < 0 or c_max < 0 or iteration_threshold < 1:
            raise SBVAEError("AnnealedVAE needs gamma >= 0, c_max >= 0 and iteration_threshold >= 1.")
        super().__init__(**vae_options)
        self.save_hyperparameters()

    def loss_terms(self, x: torch.Tensor, noise: torch.Tensor, step: torch.Tensor) -> dict[str, torch.Tensor]:
        """``step`` [B]: the steps done before this one, the same on every row (rows, so replicas split it)."""
        return self.objective(self.posterior_terms(x, noise), step[0])

    def objective(self, terms: objectives.PosteriorTerms, step: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if step is None:
            raise SBVAEError("AnnealedVAE's objective needs the training step: call loss_terms through the engine.")
        return objectives.annealed_vae_loss(
            terms.nll, terms.kl, step, self.hparams.gamma, self.hparams.c_max, self.hparams.iteration_threshold
        )
