"""Likelihoods, KL and the VAE-family objectives, in nats per image.

Every term is summed over pixels and latents and averaged over the batch, so
the logged numbers are directly comparable with the paper's tables (ELBO, NLL
and KL "per image").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
