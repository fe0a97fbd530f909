"""Downstream task (Locatello et al. 2019), disentanglement_lib's ``downstream_task``.

For each training size n in ``num_train`` a fresh training set of n codes and a
fresh test set of ``num_test`` codes are drawn (train, then test, from the one
seeded stream: disentanglement_lib's order); one classifier per factor predicts
the factor class from the whole code; the result holds each factor's train and
test accuracy, their mean and min over factors, per size.

``predictor`` names one of disentanglement_lib's two predictors (one gin config
each, ``unsupervised_study_v1/metric_configs/downstream_task_*.gin``):

* ``"logistic_regression"``: ``logistic_regression_cv`` of
  ``evaluation/metrics/utils.py``, i.e. ``LogisticRegressionCV(Cs=10,
  cv=KFold(n_splits=5))``: 10 inverse regularisation strengths on
  ``logspace(-4, 4)``, chosen by 5-fold (unshuffled) cross-validated accuracy,
  then refit on all n points; L2, lbfgs, max_iter 100, no standardisation.
* ``"boosted_trees"``: ``gradient_boosting_classifier``, i.e. scikit-learn's
  ``GradientBoostingClassifier()`` with its defaults (100 depth-3 trees per
  class, learning rate 0.1).

Both configs use ``num_train = [10, 100, 1000, 10000]`` and ``num_test = 5000``
with evaluation seed 0, so one seed gives both predictors the same codes here too.
The headline ``score`` is the mean test accuracy at the largest training size
(disentanglement_lib's ``"10000:mean_test_accuracy"`` at its defaults).

Cost: these are slow. Through ``downstream`` at these defaults, on 10-dim codes
of dSprites-like factors (3, 6, 40, 32, 32 classes) on a shared 2-core CPU, the
logistic regression took 48 s (~38 s of it at 10,000 points: 51 lbfgs fits per
factor) and the boosted trees 387 s (~360 s at 10,000: 100 trees per class, so
4,000 trees for a 40-class factor). Pass smaller ``num_train`` / ``num_test`` or
``predictor_kwargs`` (e.g. ``{"n_estimators": 10}``) for quick checks; those
depart from disentanglement_lib's numbers. ``n_jobs`` fits the factors in parallel
threads and keeps the numbers; the slowest factor bounds the gain.

A factor whose training draw holds a single class (likely only at n = 10 and
for factors with few classes) cannot be fitted by either scikit-learn model
(disentanglement_lib crashes with its ValueError there). Here it is predicted
as that one class, the only hypothesis the training data support: train
accuracy 1, test accuracy the class's share of the test set. Such factors are
listed per size in ``single_class``.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    Represent,
    as_numpy,
    make_generator,
    per_factor,
    sample_train_test,
)

PREDICTORS = ("logistic_regression", "boosted_trees")
NUM_TRAIN = (10, 100, 1_000, 10_000)  # downstream_task_*.gin: downstream_task.num_train
NUM_TEST = 5_000  # downstream_task_*.gin: downstream_task.num_test
_CV_FOLDS = 5  # utils.logistic_regression_cv: KFold(n_splits=5)
_NUM_CS = 10  # utils.logistic_regression_cv: Cs=10


@dataclasses.dataclass(frozen=True)
class DownstreamResult(MetricResult):
    """Accuracies per training size (dict keys: the sizes, in ``num_train`` order).

    ``mean_*`` / ``min_*`` are disentanglement_lib's ``"<n>:mean_test_accuracy"`` etc.;
    ``train_accuracy[n]`` / ``test_accuracy[n]`` its ``"<n>:test_accuracy_factor_<k>"`` as arrays [K].
    """

    score: float  # = mean_test_accuracy[max(num_train)]
    predictor: str
    num_train: tuple[int, ...]
    num_test: int
    mean_train_accuracy: dict[int, float]
    mean_test_accuracy: dict[int, float]
    min_train_accuracy: dict[int, float]
    min_test_accuracy: dict[int, float]
    train_accuracy: dict[int, np.ndarray]  # [K] per size
    test_accuracy: dict[int, np.ndarray]  # [K] per size
    single_class: dict[int, tuple[int, ...]]  # factors predicted by the single-class rule, per size

    def scalars(self) -> dict[str, float]:
        """The score, then the mean test and train accuracy of every size (``test_accuracy_<n>``, ``train_accuracy_<n>``)."""
        out = {"score": float(self.score)}
        for n in self.num_train:
            out[f"test_accuracy_{n}"] = float(self.mean_test_accuracy[n])
        for n in self.num_train:
            out[f"train_accuracy_{n}"] = float(self.mean_train_accuracy[n])
        return out


class _SingleClass:
    """The one classifier a single-class training set supports: predict that class."""

    def __init__(self, label: Any):
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(x.shape[0], self.label)


def _logistic_regression_kwargs() -> dict[str, Any]:
    """Arguments that pin DL's LogisticRegressionCV across scikit-learn versions, without warnings.

    scoring="accuracy" is what scoring=None means (the estimator's score); it must be said
    explicitly since scikit-learn 1.8 announces a switch to log loss. From 1.8 plain L2 is
    spelled l1_ratios=(0.0,) (penalty is deprecated); the legacy attributes are not read here.
    """
    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    kwargs: dict[str, Any] = {"scoring": "accuracy"}
    if "penalty" in params and params["penalty"].default == "deprecated":
        kwargs["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:
        kwargs["use_legacy_attributes"] = False
    return kwargs


def _make_predictor(predictor: str, random_state: int, predictor_kwargs: dict | None) -> Any:
    if predictor == "logistic_regression":
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import KFold

        # lbfgs draws no random numbers, so DL passes no seed and neither do we.
        kwargs = {
            "Cs": _NUM_CS,
            "cv": KFold(n_splits=_CV_FOLDS),
            **_logistic_regression_kwargs(),
            **(predictor_kwargs or {}),
        }
        return LogisticRegressionCV(**kwargs)
    from sklearn.ensemble import GradientBoostingClassifier

    # DL leaves random_state None (numpy's global stream); a seed from our generator makes scores reproducible.
    return GradientBoostingClassifier(**{"random_state": random_state, **(predictor_kwargs or {})})


def _check_predictor(predictor: str) -> None:
    if predictor not in PREDICTORS:
        raise MetricError(f"unknown downstream predictor {predictor!r}: choose one of {', '.join(PREDICTORS)}.")


def _as_split(codes: Any, factors: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(as_numpy(codes), dtype=np.float64)
    y = np.asarray(as_numpy(factors))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or 0 in x.shape:
        raise MetricError(
            f"{name} codes must be [N, D] and factors [N, K] with the same N > 0 and D > 0, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}; pass one row per sampled image."
        )
    if not np.isfinite(x).all():
        raise MetricError(f"{name} codes contain nan or inf (has the model diverged?); score a finite checkpoint.")
    return x, y


def _fit_size(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    predictor: str,
    random_state: int,
    predictor_kwargs: dict | None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Per-factor train and test accuracy [K] of one training set, and the factors fit by the single-class rule."""

    def fit(k: int) -> tuple[float, float, bool]:
        classes = np.unique(y_tr[:, k])
        if classes.size == 1:
            model = _SingleClass(classes[0])
        else:
            model = _make_predictor(predictor, random_state, predictor_kwargs)
            model.fit(x_tr, y_tr[:, k])
        return (
            float(np.mean(model.predict(x_tr) == y_tr[:, k])),
            float(np.mean(model.predict(x_te) == y_te[:, k])),
            classes.size == 1,
        )

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One BLAS thread: scipy's lbfgs makes thousands of tiny BLAS calls, and on a shared
    # 2-core machine OpenBLAS's threads made LogisticRegressionCV 30x slower (same accuracies).
    # DL's lbfgs stops at max_iter=100 for large C; its ConvergenceWarning is part of the definition.
    # Both settings are the process's, so they hold in per_factor's threads too.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        train_acc, test_acc, single = zip(*per_factor(fit, y_tr.shape[1], n_jobs))
    return np.array(train_acc), np.array(test_acc), tuple(k for k, one in enumerate(single) if one)


def _result(
    predictor: str, num_test: int, per_size: dict[int, tuple[np.ndarray, np.ndarray, tuple[int, ...]]]
) -> DownstreamResult:
    sizes = tuple(per_size)
    train = {n: per_size[n][0] for n in sizes}
    test = {n: per_size[n][1] for n in sizes}
    mean_test = {n: float(np.mean(test[n])) for n in sizes}
    return DownstreamResult(
        score=mean_test[max(sizes)],
        predictor=predictor,
        num_train=sizes,
        num_test=int(num_test),
        mean_train_accuracy={n: float(np.mean(train[n])) for n in sizes},
        mean_test_accuracy=mean_test,
        min_train_accuracy={n: float(np.min(train[n])) for n in sizes},
        min_test_accuracy={n: float(np.min(test[n])) for n in sizes},
        train_accuracy=train,
        test_accuracy=test,
        single_class={n: per_size[n][2] for n in sizes},
    )


def _check_sizes(num_train: Sequence[int], num_test: int, predictor: str) -> tuple[int, ...]:
    sizes = tuple(int(n) for n in num_train)
    if not sizes or len(set(sizes)) != len(sizes) or min(sizes) < 1 or int(num_test) < 1:
        raise MetricError(
            f"downstream needs distinct positive training sizes and a positive num_test, got num_train={list(num_train)} "
            f"and num_test={num_test}; use e.g. num_train=(10, 100, 1000, 10000), num_test=5000."
        )
    if predictor == "logistic_regression" and min(sizes) < _CV_FOLDS:
        raise MetricError(
            f"logistic_regression cross-validates over {_CV_FOLDS} folds, so every training size must be at least "
            f"{_CV_FOLDS}, got {min(sizes)}; raise the smallest of num_train."
        )
    return sizes


def downstream_from_codes(
    train_codes: Any,
    train_factors: Any,
    test_codes: Any,
    test_factors: Any,
    predictor: str = "logistic_regression",
    random_state: int = 0,
    predictor_kwargs: dict | None = None,
    n_jobs: int = 1,
) -> DownstreamResult:
    """Downstream accuracies of one train/test split: codes [N, D], factor class indices [N, K].

    The result has one training size, N_train; ``random_state`` seeds the boosted trees only.
    ``predictor_kwargs`` override the scikit-learn model's arguments (not DL's definition).
    ``n_jobs`` fits the factors in that many threads (the same numbers; -1: every core).
    """
    _check_predictor(predictor)
    x_tr, y_tr = _as_split(train_codes, train_factors, "train")
    x_te, y_te = _as_split(test_codes, test_factors, "test")
    if x_tr.shape[1] != x_te.shape[1] or y_tr.shape[1] != y_te.shape[1]:
        raise MetricError(
            f"train and test splits disagree: codes of {x_tr.shape[1]} vs {x_te.shape[1]} dims, "
            f"{y_tr.shape[1]} vs {y_te.shape[1]} factors; draw both from the same data and representation."
        )
    _check_sizes((x_tr.shape[0],), x_te.shape[0], predictor)
    fitted = _fit_size(x_tr, y_tr, x_te, y_te, predictor, int(random_state), predictor_kwargs, n_jobs)
    return _result(predictor, x_te.shape[0], {x_tr.shape[0]: fitted})


def downstream(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    num_train: Sequence[int] = NUM_TRAIN,
    num_test: int = NUM_TEST,
    predictor: str = "logistic_regression",
    predictor_kwargs: dict | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_jobs: int = 1,
) -> DownstreamResult:
    """Downstream task of ``represent`` on ``data`` (disentanglement_lib defaults: sizes 10..10,000, 5,000 test codes).

    For each size in order: ``num_train[i]`` training codes, then ``num_test`` test codes, then the
    trees' seed, all from one seeded generator, so both predictors see the same codes for one seed.
    """
    _check_predictor(predictor)
    sizes = _check_sizes(num_train, num_test, predictor)
    gen = make_generator(seed)
    per_size = {}
    for n in sizes:
        (z_tr, y_tr), (z_te, y_te), random_state = sample_train_test(
            data, represent, gen, n, num_test, chunk_size, device
        )
        x_tr, y_tr = _as_split(z_tr, y_tr, "train")
        x_te, y_te = _as_split(z_te, y_te, "test")
        per_size[n] = _fit_size(x_tr, y_tr, x_te, y_te, predictor, random_state, predictor_kwargs, n_jobs)
    return _result(predictor, num_test, per_size)
