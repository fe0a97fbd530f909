"""Latents used (Watters et al. 2019, "LATENTS USED"): dimensions the model keeps informative.

A latent counts as used when its posterior standard deviation, averaged over
the data, is below ``threshold`` (0.5): an unused latent matches the prior
(std 1) on every image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sbvae.metrics.utils import MetricError, MetricResult, as_tensor


@dataclasses.dataclass(frozen=True)
class LatentsUsedResult(MetricResult):
    score: int  # number of used latents
    mean_std: torch.Tensor  # [D] posterior std averaged over the data
    used: torch.Tensor  # [D] bool


def count_used(mean_std: torch.Tensor, threshold: float = 0.5) -> int:
    """The rule itself, on posterior stds already averaged over the data [D]."""
    return int((mean_std < threshold).sum())


def latents_used(logvar: Any = None, *, std: Any = None, threshold: float = 0.5) -> LatentsUsedResult:
    """Count the latents whose mean posterior std is below ``threshold``.

    Give the encoder's log-variances ``logvar`` [N, D] or the standard deviations ``std`` [N, D].
    """
    if (logvar is None) == (std is None):
        raise MetricError("latents_used needs exactly one of logvar [N, D] or std=[N, D].")
    s = (0.5 * as_tensor(logvar, dtype=torch.float64)).exp() if std is None else as_tensor(std, dtype=torch.float64)
    if s.ndim != 2:
        raise MetricError(f"expected posterior parameters [N, D], got shape {tuple(s.shape)}.")
    mean_std = s.mean(dim=0).cpu()
    return LatentsUsedResult(score=count_used(mean_std, threshold), mean_std=mean_std, used=mean_std < threshold)
