"""Modularity and explicitness (Ridgeway & Mozer 2018), disentanglement_lib's variant.

Modularity: from the histogram mutual information MI [D, K] (as in MIG), each
code dimension scores 1 - (sum_k MI^2 - max_k MI^2) / (max_k MI^2 (K - 1)),
or 0 when it carries no information; the score is the mean over dimensions.
Explicitness: per factor, a one-vs-rest logistic regression on the
standardised codes; the macro ROC AUC of its class probabilities (train and
test), averaged over factors. Classes absent from a split are left out of
that split's average (disentanglement_lib would fail on them).
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
    as_numpy,
    sample_train_test,
)


@dataclasses.dataclass(frozen=True)
class ModularityResult(MetricResult):
    score: float  # = modularity
    modularity: float
    explicitness_train: float
    explicitness_test: float
    mutual_info: np.ndarray  # [D, K]


def modularity(mutual_info: Any) -> float:
    """Modularity of a mutual-information matrix [D, K] (codes x factors)."""
    sq = np.square(np.asarray(as_numpy(mutual_info), dtype=np.float64))
    peak = sq.max(axis=1)
    with np.errstate(invalid="ignore"):  # 0 / 0 for a code with no information (peak 0), replaced below
        per_code = 1.0 - (sq.sum(axis=1) - peak) / (peak * (sq.shape[1] - 1.0))
    return float(np.mean(np.where(peak == 0.0, 0.0, per_code)))


def _macro_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    onehot = y[:, None] == classes[None, :]
    both = onehot.any(axis=0) & ~onehot.all(axis=0)  # one-vs-rest needs the class and another in the split
    if not both.any():
        raise MetricError(
            f"explicitness needs each factor to take two values in each split, but one takes only "
            f"{classes[onehot.any(axis=0)].tolist()}; use more points (num_train, num_test)."
        )
    return float(roc_auc_score(onehot[:, both], proba[:, both], average="macro"))


def explicitness(train_codes: Any, train_factors: Any, test_codes: Any, test_factors: Any) -> tuple[float, float]:
    """(train, test) explicitness: mean over factors of the macro ROC AUC of a logistic regression
    (scikit-learn's default lbfgs solver, which draws no random numbers: no seed)."""
    from sklearn.linear_model import LogisticRegression

    x_tr, x_te = as_numpy(train_codes).astype(np.float64), as_numpy(test_codes).astype(np.float64)
    y_tr, y_te = as_numpy(train_factors), as_numpy(test_factors)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant code stays 0 instead of nan
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    train, test = [], []
    for k in range(y_tr.shape[1]):
        clf = LogisticRegression().fit(x_tr, y_tr[:, k])
        train.append(_macro_auc(y_tr[:, k], clf.predict_proba(x_tr), clf.classes_))
        test.append(_macro_auc(y_te[:, k], clf.predict_proba(x_te), clf.classes_))
    return float(np.mean(train)), float(np.mean(test))


def modularity_explicitness_from_codes(
    train_codes: Any, train_factors: Any, test_codes: Any, test_factors: Any, num_bins: int = 20
) -> ModularityResult:
    """Modularity (from the train split's histogram MI) and explicitness of codes [N, D] vs factors [N, K]."""
    mi = mutual_information(discretize(train_codes, num_bins), train_factors).cpu().numpy()
    mod = modularity(mi)
    exp_train, exp_test = explicitness(train_codes, train_factors, test_codes, test_factors)
    return ModularityResult(
        score=mod, modularity=mod, explicitness_train=exp_train, explicitness_test=exp_test, mutual_info=mi
    )


def modularity_explicitness(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_bins: int = 20,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ModularityResult:
    """Modularity and explicitness of ``represent`` on ``data`` (disentanglement_lib defaults)."""
    train, test, _ = sample_train_test(data, represent, seed, num_train, num_test, chunk_size, device)  # no model seed
    return modularity_explicitness_from_codes(*train, *test, num_bins=num_bins)
