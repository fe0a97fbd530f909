"""Interventional Robustness Score (Suter et al. 2019), disentanglement_lib's ``irs``.

disentanglement_lib (evaluation/metrics/irs.py) first bins each factor with
its histogram discretizer (20 bins in the study's irs.gin: factors with more
than 20 classes, dSprites' orientation and positions, are merged into 20
groups) and drops code dimensions of zero variance. With codes z [N, D] and a
factor g_k,

    max_dev[d]    = max_n |z_nd - mean_n z_nd|
    dev[d, k]     = mean over the groups v of g_k of
                    quantile_q(|z_nd - mean_{n in v} z_nd| over n in v)
    IRS[d, k]     = 1 - dev[d, k] / max_dev[d]
    per_dim[d]    = max_k IRS[d, k]
    IRS           = average of per_dim weighted by max_dev

with q = ``diff_quantile`` = 0.99 (numpy.quantile's linear interpolation; 1.0
is the paper's maximum). A code whose every dimension is constant scores 0,
as in disentanglement_lib. Everything runs in float64 torch on the codes' device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sbvae.metrics.mig import discretize
from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    Represent,
    as_tensor,
    sample_codes,
)


@dataclasses.dataclass(frozen=True)
class IRSResult(MetricResult):
    score: float  # IRS
    irs_matrix: np.ndarray  # [A, K] IRS[d, k] of each active dimension with each factor
    per_dim: np.ndarray  # [A] max_k IRS[d, k] (disentanglement_lib's "disentanglement_scores")
    parents: np.ndarray  # [A] argmax_k IRS[d, k]: the factor each active dimension follows
    max_deviations: np.ndarray  # [A] the weights of the average
    active_dims: np.ndarray  # [A] indices of the non-constant code dimensions (the rows above)
    num_active_dims: int


def drop_constant_dims(codes: torch.Tensor) -> torch.Tensor:
    """Indices of the dimensions of codes [N, D] whose variance is not exactly 0 (irs._drop_constant_dims)."""
    return torch.nonzero(codes.var(dim=0, unbiased=False) > 0).flatten()


def _group_quantiles(diffs: torch.Tensor, group: torch.Tensor, counts: torch.Tensor, q: float) -> torch.Tensor:
    """numpy.quantile(diffs[group == v], q, axis=0) for every group v at once -> [G, D].

    Two sorts lay each column out group after group, each group ascending, so the
    linear-interpolation order statistics of all groups are read by index.
    """
    values, order = torch.sort(diffs, dim=0)
    regroup = torch.sort(group[order], dim=0, stable=True).indices  # stable: keeps each group ascending
    values = torch.gather(values, 0, regroup)
    starts = torch.cumsum(counts, 0) - counts
    position = (counts - 1).double() * q  # numpy's "linear" virtual index (n - 1) q
    below = position.floor().long()
    above = torch.minimum(below + 1, counts - 1)
    lo, hi = values[starts + below], values[starts + above]
    # torch.lerp switches to b - (1 - t)(b - a) for t >= 0.5, exactly as numpy's _lerp does.
    return torch.lerp(lo, hi, (position - below.double())[:, None].expand_as(lo))


def _factor_deviation(codes: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """dev[:, k] [D]: the mean over the factor's groups of the q-quantile of |z - E[z | group]|."""
    _, group, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    means = torch.zeros(counts.numel(), codes.shape[1], dtype=codes.dtype, device=codes.device)
    means.index_add_(0, group, codes).div_(counts[:, None].double())
    diffs = (codes - means[group]).abs()
    return _group_quantiles(diffs, group, counts, q).mean(dim=0)


def scalable_disentanglement_score(codes: Any, factors: Any, diff_quantile: float = 0.99) -> dict[str, torch.Tensor]:
    """disentanglement_lib's scalable_disentanglement_score of codes [N, D] (no constant dims) and factor labels [N, K].

    Returns irs_matrix [D, K], per_dim [D], parents [D], max_deviations [D] and the weighted score.
    """
    z = as_tensor(codes, dtype=torch.float64)
    y = as_tensor(factors, device=z.device)
    max_dev = (z - z.mean(dim=0)).abs().max(dim=0).values
    dev = torch.stack([_factor_deviation(z, y[:, k], diff_quantile) for k in range(y.shape[1])], dim=1)
    irs_matrix = 1.0 - dev / max_dev[:, None]
    per_dim, parents = irs_matrix.max(dim=1)
    score = (per_dim * max_dev).sum() / max_dev.sum()  # max_dev > 0 once constant dims are dropped
    return {"score": score, "irs_matrix": irs_matrix, "per_dim": per_dim, "parents": parents, "max_deviations": max_dev}


def _check(codes: torch.Tensor, factors: torch.Tensor, diff_quantile: float) -> None:
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
        raise MetricError(f"IRS needs codes [N, D] with at least 2 points, got shape {tuple(codes.shape)}.")
    if factors.ndim != 2 or factors.shape[0] != codes.shape[0] or factors.shape[1] < 1:
        raise MetricError(
            f"IRS needs factors [N, K] with one row per code, got codes {tuple(codes.shape)} and factors {tuple(factors.shape)}."
        )
    if not bool(torch.isfinite(codes).all()):
        raise MetricError("codes contain nan or inf (has the model diverged?); IRS needs finite codes.")
    if not 0.0 <= float(diff_quantile) <= 1.0:
        raise MetricError(
            f"diff_quantile must lie in [0, 1] (0.99 in disentanglement_lib, 1.0 in the paper), got {diff_quantile}."
        )


def irs_from_codes(codes: Any, factors: Any, diff_quantile: float = 0.99, num_bins: int = 20) -> IRSResult:
    """IRS of codes [N, D] against factor class indices [N, K], as disentanglement_lib's compute_irs.

    The factors are binned by the histogram discretizer first (``num_bins`` = 20: discretizer.num_bins
    of unsupervised_study_v1/metric_configs/irs.gin); for factors with at most ``num_bins`` classes
    that leaves the groups unchanged.
    """
    z = as_tensor(codes, dtype=torch.float64)
    y = as_tensor(factors, device=z.device)
    _check(z, y, diff_quantile)
    labels = discretize(y, num_bins)
    active = drop_constant_dims(z)
    k = y.shape[1]
    if active.numel() == 0:  # disentanglement_lib's IRS of a fully collapsed code
        empty = np.zeros(0)
        return IRSResult(
            score=0.0,
            irs_matrix=np.zeros((0, k)),
            per_dim=empty,
            parents=np.zeros(0, dtype=np.int64),
            max_deviations=empty,
            active_dims=np.zeros(0, dtype=np.int64),
            num_active_dims=0,
        )
    out = scalable_disentanglement_score(z[:, active], labels, float(diff_quantile))
    arrays = {name: value.cpu().numpy() for name, value in out.items() if name != "score"}
    return IRSResult(
        score=float(out["score"]), active_dims=active.cpu().numpy(), num_active_dims=int(active.numel()), **arrays
    )


def irs(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: int = 10_000,
    batch_size: int = 16,
    diff_quantile: float = 0.99,
    num_bins: int = 20,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> IRSResult:
    """IRS of ``represent`` on ``num_train`` uniform draws of ``data`` (unsupervised_study_v1's irs.gin).

    ``num_train`` = 10,000 and ``num_bins`` = 20 as irs.gin; ``batch_size`` (irs.batch_size = 16 there) is
    disentanglement_lib's sampling batch and does not change the score: images are encoded
    ``chunk_size`` at a time here.
    """
    if int(batch_size) < 1:
        raise MetricError(f"batch_size must be a positive integer, got {batch_size}.")
    codes, factors = sample_codes(data, represent, num_train, seed, chunk_size, device)
    return irs_from_codes(codes, factors, diff_quantile, num_bins)
