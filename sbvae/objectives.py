"""Likelihoods, KL and the VAE-family objectives, in nats per image.

Every term is summed over pixels and latents and averaged over the batch, so
the logged numbers are directly comparable with the paper's tables (ELBO, NLL
and KL "per image").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian")


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) per image; x in [0, 1] (a continuous Bernoulli-style cross entropy, as the paper uses)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, variance: float) -> torch.Tensor:
    """-log N(x; mean, variance I) per image, with the normalising constant so it is a true NLL."""
    log_norm = 0.5 * math.log(2 * math.pi * variance)
    return (0.5 * (x - mean).pow(2) / variance + log_norm).flatten(1).sum(1)


def reconstruction_nll(output: torch.Tensor, x: torch.Tensor, likelihood: str, variance: float = 0.3) -> torch.Tensor:
    """NLL per image for the decoder output: logits (bernoulli) or the mean (gaussian)."""
    if likelihood == "bernoulli":
        return bernoulli_nll(output, x)
    if likelihood == "gaussian":
        return gaussian_nll(output, x, variance)
    raise ValueError(f"unknown likelihood {likelihood!r}: choose one of {LIKELIHOODS}.")


def mean_image(output: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The decoder's expected image in [0, 1], for pictures."""
    return torch.sigmoid(output) if likelihood == "bernoulli" else output.clamp(0, 1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over latents."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mean + std * noise, for standard normal ``noise`` (drawn by the caller from a keyed stream)."""
    return mean + noise * torch.exp(0.5 * logvar)


class PosteriorTerms(NamedTuple):
    """One batch through the VAE: what every objective is assembled from."""

    nll: torch.Tensor  # [B]
    kl: torch.Tensor  # [B]
    z: torch.Tensor  # [B, D], the posterior sample
    mean: torch.Tensor  # [B, D]
    logvar: torch.Tensor  # [B, D]


@dataclass
class ELBOTerms:
    """Batch means of the per-image terms; ``loss`` is what is optimised (beta-weighted)."""

    loss: torch.Tensor
    elbo: torch.Tensor  # the unweighted negative ELBO, NLL + KL (the paper's "ELBO" column)
    nll: torch.Tensor
    kl: torch.Tensor


def beta_vae_loss(nll: torch.Tensor, kl: torch.Tensor, beta: float) -> ELBOTerms:
    """beta-VAE objective (beta = 1 is the plain VAE) from per-image NLL and KL."""
    nll_mean, kl_mean = nll.mean(), kl.mean()
    return ELBOTerms(loss=nll_mean + beta * kl_mean, elbo=nll_mean + kl_mean, nll=nll_mean, kl=kl_mean)


def permute_dims(z: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch, in the order of ``keys`` [B, D].

    With uniform keys the result keeps every dimension's marginal but breaks the
    dependence between dimensions: a sample of prod_j q(z_j) (Kim & Mnih 2018, Alg. 2).
    """
    return torch.gather(z, 0, keys.argsort(dim=0))


def total_correlation_estimate(disc_logits: torch.Tensor) -> torch.Tensor:
    """Density-ratio estimate of TC(z): mean of logit(q(z)) - logit(prod q(z_j)) over the batch.

    The discriminator's logit 0 means "from q(z)", logit 1 "from the permuted product".
    """
    return (disc_logits[:, 0] - disc_logits[:, 1]).mean()


def discriminator_loss(logits_joint: torch.Tensor, logits_permuted: torch.Tensor) -> torch.Tensor:
    """Cross entropy: class 0 for samples of q(z), class 1 for the permuted ones."""
    zeros = torch.zeros(logits_joint.shape[0], dtype=torch.long, device=logits_joint.device)
    ones = torch.ones(logits_permuted.shape[0], dtype=torch.long, device=logits_permuted.device)
    return 0.5 * (F.cross_entropy(logits_joint, zeros) + F.cross_entropy(logits_permuted, ones))


# -- disentanglement_lib's other objectives (Locatello et al. 2019) ------------------------------------
# Each returns the batch-mean terms as a dict: ``loss`` is optimised, ``elbo``/``nll``/``kl`` are the
# shared VAE columns, and the objective's own regulariser is logged beside them.


def gaussian_log_density(samples: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(samples; mean, exp(logvar)) elementwise, broadcasting its three arguments."""
    return -0.5 * ((samples - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


def minibatch_total_correlation(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """TC(z) estimated on the batch as disentanglement_lib's beta-TCVAE does (Chen et al. 2018).

    q(z_i) and q(z_i,j) are mixtures over the batch's posteriors, evaluated at every sample z_i.
    Like disentanglement_lib, the mixtures' log(batch size x dataset size) normaliser is left out: it shifts
    the estimate by a constant, (D - 1) log(B N), which leaves the gradient, and so training, unchanged.
    """
    log_q = gaussian_log_density(z[:, None, :], mean[None, :, :], logvar[None, :, :])  # [B (sample), B (posterior), D]
    log_q_joint = torch.logsumexp(log_q.sum(2), dim=1)
    log_q_product = torch.logsumexp(log_q, dim=1).sum(1)
    return (log_q_joint - log_q_product).mean()


def beta_tcvae_loss(
    nll: torch.Tensor, kl: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, beta: float
) -> dict[str, torch.Tensor]:
    """NLL + KL + (beta - 1) TC: the beta-TCVAE penalty on top of the plain ELBO, as disentanglement_lib."""
    nll_mean, kl_mean = nll.mean(), kl.mean()
    tc = minibatch_total_correlation(z, mean, logvar)
    return {
        "loss": nll_mean + kl_mean + (beta - 1.0) * tc,
        "elbo": nll_mean + kl_mean,
        "nll": nll_mean,
        "kl": kl_mean,
        "tc": tc,
    }


def covariance(values: torch.Tensor) -> torch.Tensor:
    """Covariance [D, D] over the batch, normalised by B (E[v v^T] - E[v] E[v]^T, as disentanglement_lib)."""
    # Mixed precision would run this product in bf16; the DIP penalty stays float32, as the other losses do.
    with torch.autocast(values.device.type, enabled=False):
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        centred = values - values.mean(0)
        return centred.T @ centred / values.shape[0]


def dip_regularizer(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """lambda_od * sum of squared off-diagonal entries + lambda_d * sum of (diagonal - 1)^2."""
    diagonal = torch.diagonal(cov)
    off_diagonal = cov - torch.diag_embed(diagonal)
    return lambda_od * off_diagonal.pow(2).sum() + lambda_d * (diagonal - 1.0).pow(2).sum()


DIP_KINDS = ("i", "ii")


def dip_vae_loss(
    nll: torch.Tensor,
    kl: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kind: str,
    lambda_od: float,
    lambda_d: float,
) -> dict[str, torch.Tensor]:
    """NLL + KL + the DIP regulariser of Kumar et al. 2018 on the batch.

    DIP-VAE-I pushes the covariance of the encoder means towards I; DIP-VAE-II the covariance of the
    aggregate posterior, Cov[mean] + E[diag(exp(logvar))].
    """
    if kind not in DIP_KINDS:
        raise ValueError(f"unknown DIP-VAE kind {kind!r}: choose one of {DIP_KINDS}.")
    cov = covariance(mean)
    if kind == "ii":
        cov = cov + torch.diag_embed(torch.exp(logvar).mean(0))
    nll_mean, kl_mean = nll.mean(), kl.mean()
    dip = dip_regularizer(cov, lambda_od, lambda_d)
    return {"loss": nll_mean + kl_mean + dip, "elbo": nll_mean + kl_mean, "nll": nll_mean, "kl": kl_mean, "dip": dip}


def annealed_capacity(c_max: float, step: torch.Tensor, iteration_threshold: int) -> torch.Tensor:
    """C at ``step`` (steps done before this one): linear from 0 to c_max over iteration_threshold steps."""
    return torch.clamp(c_max * step.to(torch.float32) / iteration_threshold, max=c_max)


def annealed_vae_loss(
    nll: torch.Tensor, kl: torch.Tensor, step: torch.Tensor, gamma: float, c_max: float, iteration_threshold: int
) -> dict[str, torch.Tensor]:
    """NLL + gamma |KL - C| (Burgess et al. 2018), the batch-mean KL held near the annealed capacity C."""
    nll_mean, kl_mean = nll.mean(), kl.mean()
    capacity = annealed_capacity(c_max, step, iteration_threshold)
    return {
        "loss": nll_mean + gamma * (kl_mean - capacity).abs(),
        "elbo": nll_mean + kl_mean,
        "nll": nll_mean,
        "kl": kl_mean,
        "capacity": capacity,
    }
