"""DCI disentanglement, completeness, informativeness (Eastwood & Williams 2018), disentanglement_lib's variant.

One gradient-boosted tree classifier per factor predicts the factor class from
the codes; |feature_importances_| give the importance matrix R [D, K].
Disentanglement = sum_d (1 - H_K(R[d] / sum R[d])) * (row sum / total);
completeness = the same per factor over the codes (entropy base D);
informativeness = mean accuracy of the classifiers (train and test).
scikit-learn's trees are slow (minutes at 10,000 points on dSprites): pass
smaller ``num_train`` / ``num_test`` or ``gbt_kwargs`` (e.g. n_estimators) for quick checks, or
``n_jobs`` to fit the factors in parallel threads (the same numbers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricResult,
    Represent,
    as_numpy,
    per_factor,
    sample_train_test,
)


@dataclasses.dataclass(frozen=True)
class DCIResult(MetricResult):
    score: float  # = disentanglement
    disentanglement: float
    completeness: float
    informativeness_train: float
    informativeness_test: float
    importance_matrix: np.ndarray  # [D, K]


def _normalized_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of p (normalised to sum 1) in base ``base``; p gets 1e-11 added as in DL."""
    p = p + 1e-11
    p = p / p.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1) / np.log(base)


def disentanglement(importance: Any) -> float:
    """Weighted mean over codes of 1 - entropy (base K) of each code's importance over factors."""
    r = np.asarray(as_numpy(importance), dtype=np.float64)
    per_code = 1.0 - _normalized_entropy(r, r.shape[1])
    if r.sum() == 0.0:
        r = np.ones_like(r)
    return float(np.sum(per_code * r.sum(axis=1) / r.sum()))


def completeness(importance: Any) -> float:
    """Weighted mean over factors of 1 - entropy (base D) of each factor's importance over codes."""
    r = np.asarray(as_numpy(importance), dtype=np.float64)
    per_factor = 1.0 - _normalized_entropy(r.T, r.shape[0])
    if r.sum() == 0.0:
        r = np.ones_like(r)
    return float(np.sum(per_factor * r.sum(axis=0) / r.sum()))


def dci_from_codes(
    train_codes: Any,
    train_factors: Any,
    test_codes: Any,
    test_factors: Any,
    random_state: int = 0,
    gbt_kwargs: dict | None = None,
    n_jobs: int = 1,
) -> DCIResult:
    """DCI of codes [N, D] against factor class indices [N, K] (train and test splits).

    ``n_jobs`` fits the factors' classifiers in that many threads (same numbers, -1: every core)."""
    from sklearn.ensemble import GradientBoostingClassifier

    x_tr, x_te = as_numpy(train_codes).astype(np.float64), as_numpy(test_codes).astype(np.float64)
    y_tr, y_te = as_numpy(train_factors), as_numpy(test_factors)

    def fit(k: int) -> tuple[np.ndarray, float, float]:
        model = GradientBoostingClassifier(random_state=random_state, **(gbt_kwargs or {}))
        model.fit(x_tr, y_tr[:, k])
        return (
            np.abs(model.feature_importances_),
            np.mean(model.predict(x_tr) == y_tr[:, k]),
            np.mean(model.predict(x_te) == y_te[:, k]),
        )

    importances, acc_train, acc_test = zip(*per_factor(fit, y_tr.shape[1], n_jobs))
    importance = np.stack(importances, axis=1)  # [D, K]
    return DCIResult(
        score=disentanglement(importance),
        disentanglement=disentanglement(importance),
        completeness=completeness(importance),
        informativeness_train=float(np.mean(acc_train)),
        informativeness_test=float(np.mean(acc_test)),
        importance_matrix=importance,
    )


def dci(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: int = 10_000,
    num_test: int = 5_000,
    gbt_kwargs: dict | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_jobs: int = 1,
) -> DCIResult:
    """DCI of ``represent`` on ``data`` (disentanglement_lib defaults: 10,000 train / 5,000 test codes)."""
    train, test, random_state = sample_train_test(data, represent, seed, num_train, num_test, chunk_size, device)
    return dci_from_codes(*train, *test, random_state=random_state, gbt_kwargs=gbt_kwargs, n_jobs=n_jobs)
