"""SAP score (Kumar et al. 2018), disentanglement_lib's variant.

A score matrix S [D, K] rates how well each single code dimension predicts
each factor: for discrete factors (default) the test accuracy of a linear SVM
(C = 0.01, balanced classes) on that one dimension; for continuous factors the
R^2 = cov(z_d, y_k)^2 / (var z_d var y_k) on the train codes (0 where
var z_d <= 1e-12). SAP = mean over factors of the gap between the two best
dimensions.
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
    as_tensor,
    sample_train_test,
)


@dataclasses.dataclass(frozen=True)
class SAPResult(MetricResult):
    score: float
    score_matrix: np.ndarray  # [D, K]


def continuous_score_matrix(codes: Any, factors: Any) -> np.ndarray:
    """R^2 [D, K] of each code dimension with each factor (covariances with ddof = 1, float64)."""
    z = as_tensor(codes, dtype=torch.float64)
    y = as_tensor(factors, dtype=torch.float64, device=z.device)
    zc, yc = z - z.mean(0), y - y.mean(0)
    n = z.shape[0] - 1
    cov = zc.T @ yc / n
    var_z, var_y = zc.pow(2).sum(0) / n, yc.pow(2).sum(0) / n
    r2 = cov.pow(2) / (var_z[:, None] * var_y[None, :])
    return torch.where(var_z[:, None] > 1e-12, r2, torch.zeros_like(r2)).cpu().numpy()


def discrete_score_matrix(train_codes: Any, train_factors: Any, test_codes: Any, test_factors: Any) -> np.ndarray:
    """Test accuracy [D, K] of a linear SVM (C = 0.01, balanced) predicting each factor from each single dimension.

    Solved in the primal: deterministic (the dual solver shuffles), and the one scikit-learn >= 1.5 picks
    by itself for one feature; both solve the same problem.
    """
    from sklearn.svm import LinearSVC

    x_tr, x_te = as_numpy(train_codes).astype(np.float64), as_numpy(test_codes).astype(np.float64)
    y_tr, y_te = as_numpy(train_factors), as_numpy(test_factors)
    scores = np.zeros((x_tr.shape[1], y_tr.shape[1]))
    for d in range(x_tr.shape[1]):
        for k in range(y_tr.shape[1]):
            clf = LinearSVC(C=0.01, class_weight="balanced", dual=False)
            clf.fit(x_tr[:, d : d + 1], y_tr[:, k])
            scores[d, k] = np.mean(clf.predict(x_te[:, d : d + 1]) == y_te[:, k])
    return scores


def top_two_gap(score_matrix: np.ndarray) -> float:
    """Mean over factors (columns) of the gap between the two largest entries."""
    s = np.sort(np.asarray(score_matrix), axis=0)
    return float(np.mean(s[-1] - s[-2]))


def sap_from_codes(
    train_codes: Any,
    train_factors: Any,
    test_codes: Any,
    test_factors: Any,
    continuous_factors: bool = False,
) -> SAPResult:
    """SAP of codes [N, D] against factors [N, K] (the test split is unused for continuous factors)."""
    if continuous_factors:
        matrix = continuous_score_matrix(train_codes, train_factors)
    else:
        matrix = discrete_score_matrix(train_codes, train_factors, test_codes, test_factors)
    return SAPResult(score=top_two_gap(matrix), score_matrix=matrix)


def sap(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous_factors: bool = False,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> SAPResult:
    """SAP of ``represent`` on ``data`` (disentanglement_lib defaults)."""
    train, test, _ = sample_train_test(data, represent, seed, num_train, num_test, chunk_size, device)  # no model seed
    return sap_from_codes(*train, *test, continuous_factors=continuous_factors)
