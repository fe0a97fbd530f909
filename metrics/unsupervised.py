"""Unsupervised scores of a code (disentanglement_lib's ``unsupervised_metrics``): no factors used.

From the codes' covariance C [D, D] (numpy.cov, ddof = 1):

    gaussian_total_correlation = 0.5 (sum_d log C_dd - log det C)
        KL between N(0, C) and the product of its marginals N(0, diag C);
    gaussian_wasserstein_correlation = 2 tr C - 2 tr sqrtm(diag(C) C)
        the squared 2-Wasserstein distance between the same two Gaussians;
    gaussian_wasserstein_correlation_norm = that / tr C;

and from the codes binned by the histogram discretizer (20 bins: discretizer.num_bins
of disentanglement_lib's unsupervised.gin),

    mutual_info_score = mean over ordered pairs d != e of MI(bins_d, bins_e)  (nats).

All are 0 for independent code dimensions. The headline ``score`` is the total correlation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sbvae.metrics.mig import discretize, mutual_information
from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    Represent,
    as_tensor,
    sample_codes,
)

SINGULAR_TOLERANCE = 1e-12  # correlation eigenvalue ratio below which the codes are linearly dependent


@dataclasses.dataclass(frozen=True)
class UnsupervisedResult(MetricResult):
    score: float  # the Gaussian total correlation
    gaussian_total_correlation: float
    gaussian_wasserstein_correlation: float
    gaussian_wasserstein_correlation_norm: float
    mutual_info_score: float
    covariance: np.ndarray  # [D, D] ddof = 1
    mutual_info: np.ndarray  # [D, D] nats between binned dimensions, diagonal set to 0 as disentanglement_lib does


def covariance(codes: Any) -> torch.Tensor:
    """numpy.cov(codes.T) [D, D] in float64 (rows are points, ddof = 1)."""
    z = as_tensor(codes, dtype=torch.float64)
    zc = z - z.mean(dim=0)
    return zc.T @ zc / (z.shape[0] - 1)


def _check_covariance(cov: torch.Tensor) -> None:
    """Refuse a covariance whose log-determinant is not finite: the scores would be nan or inf."""
    constant = [int(d) for d in torch.nonzero(torch.diagonal(cov) <= 0).flatten()]
    if constant:
        raise MetricError(
            f"code dimension(s) {constant} are constant in this sample, so the Gaussian total correlation is "
            "undefined (log 0); drop constant dimensions (see latents_used) before scoring."
        )
    # The correlation matrix's spectrum is scale-free; an eigenvalue this small (roundoff is about
    # D * 1e-16) means an exact linear dependence, whose finite slogdet would be noise, not a score.
    root = torch.diagonal(cov).sqrt()
    eig = torch.linalg.eigvalsh(cov / (root[:, None] * root[None, :]))
    if float(eig.min()) <= SINGULAR_TOLERANCE * float(eig.max()):
        raise MetricError(
            "the codes' covariance is singular (some dimensions are linear combinations of others, or there are "
            "fewer points than dimensions); score more points or drop the redundant dimensions."
        )


def gaussian_total_correlation(cov: Any) -> float:
    """0.5 (sum log diag C - log det C): KL(N(0, C) || N(0, diag C)) (unsupervised_metrics.gaussian_total_correlation)."""
    c = as_tensor(cov, dtype=torch.float64)
    _check_covariance(c)
    return float(0.5 * (torch.diagonal(c).log().sum() - torch.linalg.slogdet(c)[1]))


def gaussian_wasserstein_correlation(cov: Any) -> float:
    """2 tr C - 2 tr sqrtm(diag(C) C) (unsupervised_metrics.gaussian_wasserstein_correlation).

    diag(C) C is similar to the symmetric S = diag(C)^1/2 C diag(C)^1/2, so the trace of its
    principal square root is sum sqrt(eigvalsh(S)): a symmetric eigensolve instead of scipy's
    general sqrtm, same value, never complex.
    """
    c = as_tensor(cov, dtype=torch.float64)
    _check_covariance(c)
    root = torch.diagonal(c).sqrt()
    s = root[:, None] * c * root[None, :]
    eig = torch.linalg.eigvalsh(s).clamp_min(0.0)  # S is positive definite; clamp only roundoff
    return float(2.0 * torch.trace(c) - 2.0 * eig.sqrt().sum())


def mutual_info_score(codes: Any, num_bins: int = 20) -> tuple[float, torch.Tensor]:
    """Mean pairwise mutual information (nats) of the binned dimensions, and the matrix [D, D] with 0 diagonal."""
    labels = discretize(codes, num_bins)
    mi = mutual_information(labels, labels)
    mi.fill_diagonal_(0.0)
    d = mi.shape[0]
    return float(mi.sum() / (d * d - d)), mi


def unsupervised_from_codes(codes: Any, num_bins: int = 20) -> UnsupervisedResult:
    """disentanglement_lib's unsupervised scores of codes [N, D] (D >= 2, no constant dimension)."""
    z = as_tensor(codes, dtype=torch.float64)
    if z.ndim != 2 or z.shape[1] < 2 or z.shape[0] < 2:
        raise MetricError(
            f"the unsupervised scores need codes [N, D] with at least 2 points and 2 dimensions, got shape {tuple(z.shape)}."
        )
    if not bool(torch.isfinite(z).all()):
        raise MetricError(
            "codes contain nan or inf (has the model diverged?); the unsupervised scores need finite codes."
        )
    cov = covariance(z)
    tc = gaussian_total_correlation(cov)
    wc = gaussian_wasserstein_correlation(cov)
    mi_score, mi = mutual_info_score(z, num_bins)
    return UnsupervisedResult(
        score=tc,
        gaussian_total_correlation=tc,
        gaussian_wasserstein_correlation=wc,
        gaussian_wasserstein_correlation_norm=wc / float(torch.trace(cov)),
        mutual_info_score=mi_score,
        covariance=cov.cpu().numpy(),
        mutual_info=mi.cpu().numpy(),
    )


def unsupervised(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: int = 10_000,
    num_bins: int = 20,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> UnsupervisedResult:
    """The unsupervised scores of ``represent`` on ``num_train`` uniform draws of ``data``.

    ``num_train`` = 10,000 and ``num_bins`` = 20 as fairness_study_v1/metric_configs/unsupervised.gin
    (unsupervised_metrics.num_train, discretizer.num_bins). The factors drawn are only used to render.
    """
    codes, _ = sample_codes(data, represent, num_train, seed, chunk_size, device)
    return unsupervised_from_codes(codes, num_bins)
