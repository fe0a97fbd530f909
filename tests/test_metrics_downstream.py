"""Downstream task (disentanglement_lib's downstream_task): oracles, chance, invariances, sampling order, errors."""

import importlib
import inspect
import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegressionCV

from metric_fakes import FactorData, identity, noise
from sbvae.metrics.downstream import DownstreamResult, downstream, downstream_from_codes
from sbvae.metrics.utils import MetricError, make_generator, sample_train_test

QUICK_TREES = {"n_estimators": 10}  # DL's trees use 100; 10 keep the file fast and change no oracle below
BOTH = [("logistic_regression", None), ("boosted_trees", QUICK_TREES)]


def noisy_identity(scale=0.6, seed=3):
    """The factor row plus Gaussian noise: informative but not separable, so accuracies sit strictly inside (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda x: x.flatten(1) + scale * torch.randn(x.shape[0], x.shape[1], generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------- a case derivable by hand
# Factor 0: the sign of a 1-D code (train interleaved so each of the 5 unshuffled folds holds both classes).
# Factor 1: a single class (3) in training, so the single-class rule predicts 3 everywhere.
TINY_X = np.array([-1.0, 1.0, -1.5, 1.5, -2.0, 2.0, -1.2, 1.2, -1.8, 1.8])[:, None]
TINY_Y = np.stack([(TINY_X[:, 0] > 0).astype(int), np.full(10, 3)], axis=1)
TINY_XT = np.array([-3.0, -0.5, 0.5, 3.0])[:, None]
TINY_YT = np.array([[0, 3], [0, 0], [1, 0], [0, 3]])  # the 3.0 point is mislabelled 0; factor 1 is 3 half the time


@pytest.mark.parametrize("predictor", ["logistic_regression", "boosted_trees"])
def test_tiny_case_by_hand(predictor):
    # The symmetric training set puts either model's boundary at 0: test predictions 0, 0, 1, 1 for factor 0
    # (3 of 4 right); factor 1 predicts 3, right for 2 of 4 test points.
    r = downstream_from_codes(TINY_X, TINY_Y, TINY_XT, TINY_YT, predictor=predictor)
    assert r.num_train == (10,) and r.num_test == 4 and r.predictor == predictor
    np.testing.assert_array_equal(r.train_accuracy[10], [1.0, 1.0])
    np.testing.assert_array_equal(r.test_accuracy[10], [0.75, 0.5])
    assert r.mean_test_accuracy[10] == r.score == 0.625 and r.min_test_accuracy[10] == 0.5
    assert r.mean_train_accuracy[10] == r.min_train_accuracy[10] == 1.0
    assert r.single_class == {10: (1,)}
    # The same codes with a second, uninformative dimension: the single-class rule predicts one label per row.
    wide = downstream_from_codes(
        np.hstack([TINY_X, np.zeros_like(TINY_X)]), TINY_Y, np.hstack([TINY_XT, np.zeros_like(TINY_XT)]), TINY_YT
    )
    np.testing.assert_array_equal(wide.test_accuracy[10], [0.75, 0.5])


def test_the_smallest_sizes_are_scored():
    """One training point (single-class rule for every factor), one test point, and logistic regression at
    exactly its 5 folds: each fold's 4 training points still hold both classes of factor 0."""
    one = downstream(FactorData((3, 6)), identity, num_train=(1,), num_test=1, predictor="boosted_trees")
    assert one.single_class == {1: (0, 1)} and one.num_test == 1
    assert set(one.test_accuracy[1]) <= {0.0, 1.0} and list(one.train_accuracy[1]) == [1.0, 1.0]
    five = downstream_from_codes(TINY_X[:5], TINY_Y[:5], TINY_XT, TINY_YT)
    assert five.num_train == (5,) and five.single_class == {5: (1,)}
    with pytest.raises(MetricError, match="at least 5"):
        downstream_from_codes(TINY_X[:4], TINY_Y[:4], TINY_XT, TINY_YT)


def test_single_class_is_what_sklearn_refuses():
    """Why the rule exists: both of DL's scikit-learn models raise on a one-class target (DL would crash)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    for model in (LogisticRegression(), GradientBoostingClassifier()):
        with pytest.raises(ValueError):
            model.fit(TINY_X, TINY_Y[:, 1])


# ---------------------------------------------------------------- oracles on fake data
@pytest.mark.parametrize(
    "predictor, kwargs, sizes",
    [
        (
            "logistic_regression",
            None,
            (3, 6),
        ),  # linear logits cannot carve 10 ordered classes from one dim within C <= 1e4
        ("boosted_trees", QUICK_TREES, (3, 6, 10)),
    ],
)
def test_identity_is_perfect(predictor, kwargs, sizes):
    r = downstream(
        FactorData(sizes), identity, num_train=(200,), num_test=500, predictor=predictor, predictor_kwargs=kwargs
    )
    np.testing.assert_array_equal(r.train_accuracy[200], np.ones(len(sizes)))
    np.testing.assert_array_equal(r.test_accuracy[200], np.ones(len(sizes)))
    assert r.score == 1.0 and r.single_class == {200: ()}


@pytest.mark.parametrize("predictor, kwargs", BOTH)
def test_noise_scores_chance(predictor, kwargs):
    # Codes independent of the factors: any classifier is right with probability sum_c P(pred=c) / K = 1/K on
    # uniform factors, so the mean over (3, 6, 10) is (1/3 + 1/6 + 1/10) / 3 = 0.2 (sd of the mean ~0.006 at 2000).
    r = downstream(
        FactorData((3, 6, 10)), noise(6), num_train=(100,), num_test=2000, predictor=predictor, predictor_kwargs=kwargs
    )
    assert r.score == pytest.approx(0.2, abs=0.03)
    np.testing.assert_allclose(r.test_accuracy[100], [1 / 3, 1 / 6, 1 / 10], atol=0.05)


def test_dl_downstream_task_case():
    """DL's downstream_task_test: DummyData (10 factors of 5 values, images of pure noise), boosted trees,
    num_train=[1000], num_test=1000, asserting 1000:mean_test_accuracy in [0, 0.3]; chance is exactly 1/5."""
    r = downstream(
        FactorData((5,) * 10),
        noise(10),
        num_train=(1000,),
        num_test=1000,
        predictor="boosted_trees",
        predictor_kwargs=QUICK_TREES,
    )
    assert 0.0 <= r.mean_test_accuracy[1000] <= 0.3
    assert r.mean_test_accuracy[1000] == pytest.approx(0.2, abs=0.02)


def test_accuracy_grows_with_training_size():
    r = downstream(FactorData((10, 10)), noisy_identity(0.6), num_train=(10, 100, 1000), num_test=1000)
    tests = [r.mean_test_accuracy[n] for n in (10, 100, 1000)]
    assert tests[0] < tests[1] < tests[2]
    # Ten points show at most ten of the ten classes once each: little to learn from, far below the 1000-point fit.
    assert tests[2] - tests[0] > 0.15
    assert r.score == tests[2]


# ---------------------------------------------------------------- invariances
def _split(seed, n_train=150, n_test=600):
    data = FactorData((3, 6, 10))
    (z, y), (zt, yt), _ = sample_train_test(data, noisy_identity(0.5, seed), seed, n_train, n_test)
    extra = torch.randn(z.shape[0] + zt.shape[0], 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z, zt = torch.cat([z, extra[: z.shape[0]]], 1), torch.cat([zt, extra[z.shape[0] :]], 1)
    return z.numpy(), y.numpy(), zt.numpy(), yt.numpy()


def test_logistic_regression_ignores_permutation_and_sign():
    # L2-penalised logistic regression is invariant to permuting and negating code dimensions (the penalty is);
    # not to rescaling them (DL does not standardise: scaling by s acts like C * s^2). The invariance is the
    # optimum's: DL's lbfgs stops at max_iter=100 before converging for large C, and its iterate moves with
    # rounding (here by under 1%), so the exact check solves to convergence.
    z, y, zt, yt = _split(0)
    perm, sign = np.array([4, 2, 0, 3, 1]), np.array([1.0, -1.0, -1.0, 1.0, -1.0])
    converged = {"Cs": [0.1, 1.0], "max_iter": 1000, "tol": 1e-6}  # fewer strengths: fast enough to converge
    a = downstream_from_codes(z, y, zt, yt, predictor_kwargs=converged)
    b = downstream_from_codes(z[:, perm] * sign, y, zt[:, perm] * sign, yt, predictor_kwargs=converged)
    assert 0.4 < a.score < 0.99  # informative but not saturated, so a broken invariance would show
    np.testing.assert_array_equal(b.test_accuracy[150], a.test_accuracy[150])
    np.testing.assert_array_equal(b.train_accuracy[150], a.train_accuracy[150])
    dl_a = downstream_from_codes(z, y, zt, yt)
    dl_b = downstream_from_codes(z[:, perm] * sign, y, zt[:, perm] * sign, yt)
    np.testing.assert_allclose(dl_b.test_accuracy[150], dl_a.test_accuracy[150], atol=0.01)


def test_boosted_trees_ignore_permutation_and_scale():
    # Trees see only the order of each dimension's values: positive rescaling and permutation change nothing.
    z, y, zt, yt = _split(1)
    perm, scale = np.array([3, 0, 4, 1, 2]), np.array([10.0, 0.1, 3.0, 1e3, 0.5])
    a = downstream_from_codes(z, y, zt, yt, predictor="boosted_trees", predictor_kwargs=QUICK_TREES)
    b = downstream_from_codes(
        z[:, perm] * scale, y, zt[:, perm] * scale, yt, predictor="boosted_trees", predictor_kwargs=QUICK_TREES
    )
    assert 0.4 < a.score < 0.99
    np.testing.assert_allclose(b.test_accuracy[150], a.test_accuracy[150], atol=2 / 600)
    np.testing.assert_array_equal(b.train_accuracy[150], a.train_accuracy[150])


# ---------------------------------------------------------------- protocol: sampling order, seeds, result
def test_fresh_sets_per_size_in_dl_order():
    """Each size draws n training codes, then num_test test codes, then the trees' seed, from one stream."""
    trees = {"n_estimators": 10, "subsample": 0.5}  # subsampled, so the trees' seed shows in the accuracies
    data, rep = FactorData((3, 6, 10)), noisy_identity(0.5)
    r = downstream(
        data, rep, seed=7, num_train=(20, 50), num_test=100, predictor="boosted_trees", predictor_kwargs=trees
    )
    gen, rep = make_generator(7), noisy_identity(0.5)
    for n in (20, 50):
        train, test, random_state = sample_train_test(data, rep, gen, n, 100)
        one = downstream_from_codes(
            *train, *test, predictor="boosted_trees", random_state=random_state, predictor_kwargs=trees
        )
        np.testing.assert_array_equal(r.test_accuracy[n], one.test_accuracy[n])
        np.testing.assert_array_equal(r.train_accuracy[n], one.train_accuracy[n])
    other = downstream_from_codes(
        *train, *test, predictor="boosted_trees", random_state=random_state + 1, predictor_kwargs=trees
    )
    assert not np.array_equal(other.test_accuracy[50], one.test_accuracy[50])


def test_both_predictors_see_the_same_codes():
    seen = {}

    def recorder(key):
        def represent(x):
            seen.setdefault(key, []).append(x.clone())
            return x.flatten(1)

        return represent

    data = FactorData((3, 6))
    downstream(data, recorder("lr"), seed=2, num_train=(10, 30), num_test=40)
    downstream(
        data,
        recorder("gbt"),
        seed=2,
        num_train=(10, 30),
        num_test=40,
        predictor="boosted_trees",
        predictor_kwargs=QUICK_TREES,
    )
    lr, gbt = torch.cat(seen["lr"]), torch.cat(seen["gbt"])
    assert lr.shape[0] == 10 + 40 + 30 + 40  # fresh train and test sets for every size
    assert torch.equal(lr, gbt)


def test_result_scalars_and_json():
    r = downstream(FactorData((3, 6)), identity, num_train=(10, 40), num_test=50)
    assert isinstance(r, DownstreamResult) and r.predictor == "logistic_regression"
    s = r.scalars()
    assert list(s) == ["score", "test_accuracy_10", "test_accuracy_40", "train_accuracy_10", "train_accuracy_40"]
    assert s["score"] == r.mean_test_accuracy[40] and s["test_accuracy_10"] == r.mean_test_accuracy[10]
    assert s["train_accuracy_10"] == pytest.approx(np.mean(r.train_accuracy[10]))
    assert r.min_test_accuracy[10] == pytest.approx(np.min(r.test_accuracy[10]))
    d = json.loads(json.dumps(r.as_dict()))
    assert d["num_train"] == [10, 40] and d["mean_test_accuracy"]["40"] == r.score
    assert len(d["test_accuracy"]["10"]) == 2


def test_downstream_fits_the_predictor_it_is_given_on_the_codes_it_draws():
    """Logistic regression through downstream() is the one downstream_from_codes fits on the same draws
    (the boosted trees' case is test_fresh_sets_per_size_in_dl_order); the default seed is 0."""
    data = FactorData((3, 6, 10))
    r = downstream(data, noisy_identity(0.5), num_train=(40,), num_test=100)
    gen = make_generator(0)
    train, test, _ = sample_train_test(data, noisy_identity(0.5), gen, 40, 100)
    one = downstream_from_codes(*train, *test)
    trees = downstream_from_codes(*train, *test, predictor="boosted_trees", predictor_kwargs=QUICK_TREES)
    np.testing.assert_array_equal(r.test_accuracy[40], one.test_accuracy[40])
    np.testing.assert_array_equal(r.train_accuracy[40], one.train_accuracy[40])
    assert not np.array_equal(r.train_accuracy[40], trees.train_accuracy[40])  # the trees fit another model


def test_seed_reproducible_and_matters():
    kwargs = dict(num_train=(20,), num_test=200, predictor="boosted_trees", predictor_kwargs=QUICK_TREES)
    a = downstream(FactorData((3, 6, 10)), noisy_identity(0.8), seed=0, **kwargs)
    b = downstream(FactorData((3, 6, 10)), noisy_identity(0.8), seed=0, **kwargs)
    c = downstream(FactorData((3, 6, 10)), noisy_identity(0.8), seed=1, **kwargs)
    np.testing.assert_array_equal(a.test_accuracy[20], b.test_accuracy[20])
    assert not np.array_equal(a.test_accuracy[20], c.test_accuracy[20])


# ---------------------------------------------------------------- errors a user can fix
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(predictor="svm"), "choose one of"),
        (dict(num_train=(4,)), "at least 5"),
        (dict(num_train=(10, 10)), "distinct positive"),
        (dict(num_train=(), num_test=10), "distinct positive"),
        (dict(num_train=(10,), num_test=0), "distinct positive"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(MetricError, match=match):
        downstream(FactorData((3, 6)), identity, **kwargs)


def test_bad_codes():
    with pytest.raises(MetricError, match="disagree"):
        downstream_from_codes(TINY_X, TINY_Y, np.zeros((4, 2)), TINY_YT)
    with pytest.raises(MetricError, match=r"\[N, D\]"):
        downstream_from_codes(TINY_X[:5], TINY_Y, TINY_XT, TINY_YT)
    with pytest.raises(MetricError, match=r"\[N, D\]"):  # codes of one dimension but factors of two
        downstream_from_codes(TINY_X[:, 0], TINY_Y, TINY_XT, TINY_YT)
    with pytest.raises(MetricError, match=r"same N > 0"):  # an empty test set
        downstream_from_codes(TINY_X, TINY_Y, TINY_XT[:0], TINY_YT[:0])
    with pytest.raises(MetricError, match="nan"):
        downstream_from_codes(np.full_like(TINY_X, np.nan), TINY_Y, TINY_XT, TINY_YT)
    with pytest.raises(MetricError, match="ground-truth"):
        downstream(FactorData((3, 6), has_ground_truth=False), identity, num_train=(10,), num_test=10)
    with pytest.raises(MetricError, match=r"D > 0"):  # codes of no dimension
        downstream_from_codes(TINY_X[:, :0], TINY_Y, TINY_XT[:, :0], TINY_YT)


def test_errors_name_the_split():
    """A bad split passed to downstream_from_codes is named, so the user knows which array to fix."""
    for train, test, split in [(TINY_X[:0], TINY_XT, "train"), (TINY_X, np.full_like(TINY_XT, np.inf), "test")]:
        with pytest.raises(MetricError, match=f"^{split} codes "):
            downstream_from_codes(train, TINY_Y[: len(train)], test, TINY_YT)


def test_logistic_regression_is_pinned_without_warnings():
    """DL's plain-L2 LogisticRegressionCV is spelled so this scikit-learn announces no change of meaning (a
    FutureWarning would say the numbers change with the next release); a warning the user's own
    predictor_kwargs cause still reaches them, only ConvergenceWarning (part of DL's definition) is hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        downstream_from_codes(TINY_X, TINY_Y, TINY_XT, TINY_YT)
    if "l1_ratios" in inspect.signature(LogisticRegressionCV).parameters:
        with pytest.warns(FutureWarning):
            downstream_from_codes(TINY_X, TINY_Y, TINY_XT, TINY_YT, predictor_kwargs={"l1_ratios": None})


class OldLogisticRegressionCV:
    """The signature of scikit-learn before 1.8 (plain L2 spelled penalty="l2"), to check the pinning there."""

    def __init__(self, Cs=10, penalty="l2", l1_ratios=None, scoring=None):
        pass  # only the signature is read


class NewLogisticRegressionCV:
    """The signature from scikit-learn 1.8: penalty deprecated, plain L2 spelled l1_ratios=(0.0,)."""

    def __init__(self, Cs=10, penalty="deprecated", l1_ratios="warn", scoring=None, use_legacy_attributes="warn"):
        pass  # only the signature is read


@pytest.mark.parametrize(
    "estimator, pinned",
    [
        (OldLogisticRegressionCV, {"scoring": "accuracy"}),  # l1_ratios there would warn that L2 ignores it
        (NewLogisticRegressionCV, {"scoring": "accuracy", "l1_ratios": (0.0,), "use_legacy_attributes": False}),
    ],
)
def test_logistic_regression_is_spelled_for_the_installed_scikit_learn(monkeypatch, estimator, pinned):
    import sklearn.linear_model

    module = importlib.import_module("sbvae.metrics.downstream")  # the package's name is the function's
    monkeypatch.setattr(sklearn.linear_model, "LogisticRegressionCV", estimator)
    assert module._logistic_regression_kwargs() == pinned


# ---------------------------------------------------------------- per-factor fits in parallel processes
def test_parallel_fits_equal_serial_ones():
    """n_jobs runs each factor's fit in a joblib thread; every accuracy, and the single-class list, must match."""
    trees = {"n_estimators": 10, "subsample": 0.5}  # subsampled: a worker with another seed would show
    kwargs = dict(num_train=(10, 40), num_test=50, predictor="boosted_trees", predictor_kwargs=trees)
    data = FactorData((2, 6, 10))  # 2 classes: likely a single-class draw at n = 10
    serial = downstream(data, noisy_identity(0.5), seed=4, **kwargs)
    parallel = downstream(data, noisy_identity(0.5), seed=4, n_jobs=2, **kwargs)
    assert serial.as_dict() == parallel.as_dict()
    x, y = np.vstack([TINY_X, TINY_X]), np.vstack([TINY_Y, TINY_Y])
    one = downstream_from_codes(x, y, TINY_XT, TINY_YT, n_jobs=-1)
    assert one.single_class[20] == (1,) and one.as_dict() == downstream_from_codes(x, y, TINY_XT, TINY_YT).as_dict()


@pytest.mark.parametrize("n_jobs", [0, -2, 1.5, True])
def test_bad_n_jobs(n_jobs):
    with pytest.raises(MetricError, match="n_jobs must be"):
        downstream_from_codes(TINY_X, TINY_Y, TINY_XT, TINY_YT, n_jobs=n_jobs)
