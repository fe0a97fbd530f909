"""Mutual Information Gap (Chen et al. 2018), disentanglement_lib's histogram estimator.

Each code dimension is discretized into ``num_bins`` equal-width bins over its
own min..max in the sample (numpy.histogram edges + numpy.digitize), the plug-in
mutual information (nats, as sklearn.metrics.mutual_info_score) is taken
against each factor's class indices, and

    MIG = mean_k (largest_d MI[d, k] - second largest_d MI[d, k]) / H[k]

with H[k] the empirical entropy of factor k in the sample (not log |V_k|).
Everything runs as batched torch code on the codes' device, sums in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from sbvae.metrics.utils import DEFAULT_CHUNK_SIZE, MetricError, MetricResult, Represent, as_tensor, sample_codes


@dataclasses.dataclass(frozen=True)
class MIGResult(MetricResult):
    score: float
    per_factor: torch.Tensor  # [K] (MI gap) / H per factor
    mutual_info: torch.Tensor  # [D, K] nats
    factor_entropy: torch.Tensor  # [K] nats
    factor_names: tuple[str, ...] | None = None  # names the per-factor gaps in scalars()

    def scalars(self) -> dict[str, float]:
        """The score, then each factor's gap by factor name (which factors the code captures)."""
        names = self.factor_names or [f"factor_{k}" for k in range(len(self.per_factor))]
        return {"score": self.score, **{name: float(gap) for name, gap in zip(names, self.per_factor.tolist())}}


def discretize(codes: Any, num_bins: int = 20) -> torch.Tensor:
    """Bin labels 1..num_bins, long [N, D], of codes [N, D], each dimension on its own.

    Edges as numpy.histogram: ``num_bins`` equal bins over min..max, computed as
    ``min + arange * step`` with the last edge set to max (a constant dimension
    spans value - 0.5 .. value + 0.5). Labels as numpy.digitize against all but
    the last edge: a value on an interior edge goes up, the max lands in bin
    ``num_bins``. Edges are float64 (numpy keeps float32 for float32 codes:
    only values exactly on an edge can differ).
    """
    x = as_tensor(codes, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise MetricError(f"codes must be a non-empty [N, D] array, got shape {tuple(x.shape)}.")
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    steps = torch.arange(num_bins + 1, dtype=torch.float64, device=x.device)
    edges = lo[:, None] + steps[None, :] * ((hi - lo) / num_bins)[:, None]  # [D, num_bins + 1]
    edges[:, -1] = hi
    # searchsorted(right=True) counts the edges <= x, which is numpy.digitize's label.
    return torch.searchsorted(edges[:, :-1].contiguous(), x.T.contiguous(), right=True).T


def _relabel(labels: Any) -> tuple[torch.Tensor, int]:
    """Columns of integer labels [N, M] -> 0-based class ids [N, M] and the largest class count."""
    y = as_tensor(labels)
    if y.ndim == 1:
        y = y[:, None]
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise MetricError("labels must be integer class indices (discretize continuous codes first).")
    ids = torch.empty(y.shape, dtype=torch.long, device=y.device)
    size = 1
    for j in range(y.shape[1]):
        values, ids[:, j] = torch.unique(y[:, j], return_inverse=True)
        size = max(size, values.numel())
    return ids, size


def _counts(ids: torch.Tensor, size: int) -> torch.Tensor:
    """Per-column class counts [M, size] (float64) of 0-based ids [N, M]."""
    n, m = ids.shape
    offset = torch.arange(m, device=ids.device) * size
    return torch.bincount((ids + offset).flatten(), minlength=m * size).view(m, size).double()


def entropy(labels: Any) -> torch.Tensor:
    """Empirical entropy (nats) of each column of integer labels [N, K] -> [K]."""
    ids, size = _relabel(labels)
    p = _counts(ids, size) / ids.shape[0]
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(dim=1)


def mutual_information(discrete_codes: Any, factors: Any) -> torch.Tensor:
    """Plug-in mutual information (nats) [D, K] between label columns [N, D] and [N, K].

    Equals sklearn.metrics.mutual_info_score(discrete_codes[:, d], factors[:, k]) for
    every pair, from one joint histogram (a single bincount) on the inputs' device.
    """
    a_ids, a_size = _relabel(discrete_codes)
    b_ids, b_size = _relabel(factors)
    b_ids = b_ids.to(a_ids.device)
    if a_ids.shape[0] != b_ids.shape[0]:
        raise MetricError(
            f"codes and factors need the same number of points, got {a_ids.shape[0]} and {b_ids.shape[0]}."
        )
    n, d = a_ids.shape
    k = b_ids.shape[1]
    # Flat index of (code dim, factor, code bin, factor class) for every point and pair.
    cell = torch.arange(d, device=a_ids.device)[:, None] * k + torch.arange(k, device=a_ids.device)[None, :]
    index = (cell[None] * a_size + a_ids[:, :, None]) * b_size + b_ids[:, None, :]  # [N, D, K]
    joint = torch.bincount(index.flatten(), minlength=d * k * a_size * b_size).double()
    joint = joint.view(d, k, a_size, b_size)
    log_a = _counts(a_ids, a_size).log()[:, None, :, None]  # [D, 1, A, 1]
    log_b = _counts(b_ids, b_size).log()[None, :, None, :]  # [1, K, 1, B]
    terms = joint / n * (joint.log() - log_a - log_b + torch.log(torch.tensor(float(n), dtype=torch.float64)))
    terms = torch.where(joint > 0, terms, torch.zeros_like(terms))
    return terms.reshape(d * k, a_size * b_size).sum(dim=1).view(d, k).clamp_min(0.0)


def mig(codes: Any, factors: Any, num_bins: int = 20, factor_names: Sequence[str] | None = None) -> MIGResult:
    """MIG of codes [N, D] (float) against factor class indices [N, K] (tensors or arrays).

    Raises MetricError (a ValueError) for a factor that is constant in the sample (entropy 0),
    where disentanglement_lib would divide by zero.
    """
    codes = as_tensor(codes)
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise MetricError(f"MIG needs codes [N, D] with at least 2 dimensions, got shape {tuple(codes.shape)}.")
    if not bool(torch.isfinite(codes).all()):
        raise MetricError("codes contain nan or inf (has the model diverged?); MIG needs finite codes.")
    factors = as_tensor(factors, device=codes.device)
    h = entropy(factors)
    constant = [int(j) for j in torch.nonzero(h <= 0).flatten()]
    if constant:
        names = [factor_names[j] if factor_names else f"#{j}" for j in constant]
        raise MetricError(
            f"factor(s) {names} take a single value in this sample (entropy 0), so MIG is undefined; "
            "drop constant factors from the factors passed to the metric (e.g. dSprites' colour)."
        )
    mi = mutual_information(discretize(codes, num_bins), factors)
    top2 = torch.topk(mi, 2, dim=0).values
    per_factor = (top2[0] - top2[1]) / h
    return MIGResult(
        score=float(per_factor.mean()),
        per_factor=per_factor.cpu(),
        mutual_info=mi.cpu(),
        factor_entropy=h.cpu(),
        factor_names=tuple(factor_names) if factor_names else None,
    )


def compute_mig(
    data: Any,
    represent: Represent,
    num_points: int = 10_000,
    seed: int | torch.Generator | None = 0,
    num_bins: int = 20,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> MIGResult:
    """MIG of ``represent`` on ``num_points`` uniform draws of ``data`` (disentanglement_lib defaults)."""
    codes, factors = sample_codes(data, represent, num_points, seed, chunk_size, device)
    return mig(codes, factors, num_bins, getattr(data, "factor_names", None))
