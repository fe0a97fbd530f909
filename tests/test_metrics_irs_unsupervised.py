"""IRS and the unsupervised scores: hand-derived oracles, disentanglement_lib's own test cases, invariances."""

import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.metrics import mutual_info_score

from metric_fakes import FactorData, identity, noise
from sbvae.metrics.irs import drop_constant_dims, irs, irs_from_codes, scalable_disentanglement_score
from sbvae.metrics.unsupervised import (
    covariance,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    unsupervised,
    unsupervised_from_codes,
)
from sbvae.metrics.unsupervised import (
    mutual_info_score as binned_mutual_info_score,
)
from sbvae.metrics.utils import MetricError, sample_codes


def small_data(**kwargs):
    return FactorData((3, 6, 10), factor_names=("a", "b", "c"), **kwargs)


def mixing(m):
    """A deterministic representation: the factor row times the matrix m."""
    return lambda x: x.flatten(1) @ torch.as_tensor(np.asarray(m, dtype=np.float64))


def counting(represent, seen):
    """represent, recording how many images each call encodes in seen."""

    def wrapped(x):
        seen.append(x.shape[0])
        return represent(x)

    return wrapped


def histogram_mi(z, bins):
    """DL's binned mutual information matrix: np.histogram bins per dim, sklearn's MI, diagonal 0."""
    labels = [np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in np.asarray(z).T]
    return np.array(
        [[0.0 if i == j else mutual_info_score(a, b) for j, b in enumerate(labels)] for i, a in enumerate(labels)]
    )


def uniform_factors(sizes, n, seed=0):
    rs = np.random.RandomState(seed)
    return np.stack([rs.randint(0, s, n) for s in sizes], axis=1)


# ================================================================ IRS
def irs_by_hand(codes, factors, q=0.99, bins=20):
    """IRS as the Suter et al. formula reads, one group at a time with numpy.quantile (factors binned as numpy.histogram)."""
    z, y = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    z = z[:, z.var(axis=0) > 0]
    y = np.stack([np.digitize(f, np.histogram(f, bins)[1][:-1]) for f in y.T], axis=1)
    max_dev = np.abs(z - z.mean(0)).max(0)
    dev = np.zeros((z.shape[1], y.shape[1]))
    for k in range(y.shape[1]):
        groups = np.unique(y[:, k])
        for v in groups:
            zg = z[y[:, k] == v]
            dev[:, k] += np.quantile(np.abs(zg - zg.mean(0)), q, axis=0) / len(groups)
    matrix = 1 - dev / max_dev[:, None]
    return float(np.average(matrix.max(1), weights=max_dev)), matrix


def test_irs_hand_computed_two_dims():
    # g = [0,0,0,1,1]. Dim A = [0,1,5,10,14]: group 0 has mean 2 and diffs [2,1,3], whose 0.99 quantile
    # (linear, index 0.99 * 2 = 1.98) is 2 + 0.98 = 2.98; group 1 has diffs [2,2] -> 2; dev = 2.49;
    # the mean is 6 so max_dev = 8 and IRS_A = 1 - 2.49 / 8. Dim B = [0,0,0,4,4] is constant within
    # groups: IRS_B = 1, max_dev = |4 - 1.6| = 2.4. The score weights dims by max_dev.
    g = np.array([[0], [0], [0], [1], [1]])
    z = np.array([[0, 0], [1, 0], [5, 0], [10, 4], [14, 4]], dtype=np.float64)
    irs_a = 1 - 2.49 / 8
    r = irs_from_codes(z, g)
    np.testing.assert_allclose(r.per_dim, [irs_a, 1.0], atol=1e-12)
    np.testing.assert_allclose(r.max_deviations, [8.0, 2.4], atol=1e-12)
    assert r.score == pytest.approx((irs_a * 8 + 1.0 * 2.4) / 10.4, abs=1e-12)
    # The quantile is a parameter: 1.0 is the paper's max (group 0 -> 3), 0.5 the median (group 0 -> 2).
    assert irs_from_codes(z[:, :1], g, diff_quantile=1.0).score == pytest.approx(1 - 2.5 / 8, abs=1e-12)
    assert irs_from_codes(z[:, :1], g, diff_quantile=0.5).score == pytest.approx(1 - 2.0 / 8, abs=1e-12)
    # Both ends of [0, 1] are allowed: 0.0 is the smallest deviation (group 0 -> 1, group 1 -> 2).
    assert irs_from_codes(z[:, :1], g, diff_quantile=0.0).score == pytest.approx(1 - 1.5 / 8, abs=1e-12)
    # The unbinned core takes the same codes and labels, 0.99 by default; integer codes are scored in float64.
    core = scalable_disentanglement_score(z.astype(np.int64), g)
    assert float(core["score"]) == pytest.approx(r.score, abs=1e-12) and core["irs_matrix"].dtype == torch.float64
    np.testing.assert_allclose(core["per_dim"].numpy(), [irs_a, 1.0], atol=1e-12)
    assert core["parents"].tolist() == [0, 0]
    np.testing.assert_allclose(core["max_deviations"].numpy(), [8.0, 2.4], atol=1e-12)
    # Two points are enough: each is its own group, deviation 0, IRS 1.
    assert irs_from_codes(z[:2], np.array([[0], [1]])).score == pytest.approx(1.0, abs=1e-12)


def test_irs_perfect_codes_score_one():
    # Each dim equals one factor (all <= 20 classes, so binning keeps the groups): within-group
    # deviation 0 on the matching factor, IRS[d, d] = 1. DL's test_metric asserts 0.9 <= IRS <= 1.
    y = uniform_factors((3, 6, 10, 20), 3000)
    r = irs_from_codes(y.astype(np.float64), y)
    assert r.score == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.diag(r.irs_matrix), 1.0, atol=1e-12)
    assert r.parents.tolist() == [0, 1, 2, 3] and r.num_active_dims == 4
    # Integer codes are scored as float64 codes.
    assert irs_from_codes(y, y).as_dict() == r.as_dict()


def test_irs_bins_factors_with_more_than_20_classes():
    # DL bins ys with its histogram discretizer (irs.gin: 20 bins). 40 classes over 0..39 in 20 bins of
    # width 1.95 pair up {2j, 2j+1}; with each class 5 times, every group has mean 2j + 0.5 and all
    # deviations 0.5, while max_dev = 39 - 19.5. Without the binning the score would be 1.
    y = np.repeat(np.arange(40), 5)[:, None]
    r = irs_from_codes(y.astype(np.float64), y)
    assert r.score == pytest.approx(1 - 0.5 / 19.5, abs=1e-12)
    assert irs_from_codes(y.astype(np.float64), y, num_bins=40).score == pytest.approx(1.0, abs=1e-12)


def test_irs_matches_groupwise_numpy_on_noisy_mixed_codes():
    sizes = (3, 6, 40, 32, 32)  # dSprites without colour: two factors merged by the binning
    y = uniform_factors(sizes, 2000)
    rs = np.random.RandomState(1)
    z = np.concatenate([y, rs.normal(size=(2000, 3))], 1) @ (np.eye(8) + 0.3 * rs.normal(size=(8, 8)))
    z += 0.5 * rs.normal(size=z.shape)
    r = irs_from_codes(z, y)
    score, matrix = irs_by_hand(z, y)
    assert r.score == pytest.approx(score, abs=1e-12)
    np.testing.assert_allclose(r.irs_matrix, matrix, atol=1e-12)
    np.testing.assert_array_equal(r.parents, matrix.argmax(1))


def test_irs_invariant_to_scaling_shift_and_permutation_of_dims():
    y = uniform_factors((3, 6, 10), 2000)
    rs = np.random.RandomState(2)
    z = y + 0.7 * rs.normal(size=y.shape)
    base = irs_from_codes(z, y)
    assert 0.2 < base.score < 0.95  # noisy: neither perfect nor trivial, so invariance is tested
    # Factors of at most 20 classes are not rebinned: the unbinned core (0.99 by default) gives the same numbers.
    core = scalable_disentanglement_score(z, y)
    assert float(core["score"]) == pytest.approx(base.score, abs=1e-12)
    np.testing.assert_allclose(core["irs_matrix"].numpy(), base.irs_matrix, atol=1e-12)
    perm = np.array([2, 0, 1])
    moved = irs_from_codes(-3.0 * z[:, perm] + 5.0, y)
    assert moved.score == pytest.approx(base.score, abs=1e-12)
    np.testing.assert_allclose(moved.irs_matrix, base.irs_matrix[perm], atol=1e-12)
    # Per-dimension scales leave every IRS[d, k] alone but move the max_dev weights of the average.
    scale = np.array([0.25, 1.0, 10.0])
    scaled = irs_from_codes(z * scale, y)
    np.testing.assert_allclose(scaled.irs_matrix, base.irs_matrix, atol=1e-12)
    np.testing.assert_allclose(scaled.max_deviations, base.max_deviations * scale, rtol=1e-12)
    assert scaled.score == pytest.approx(np.average(base.per_dim, weights=base.max_deviations * scale), abs=1e-12)
    assert scaled.score != pytest.approx(base.score, abs=1e-3)


def test_irs_drops_constant_dims():
    # DL's test__drop_constant_dims: 100 x 100 normal draws, first and last dimension set constant.
    rs = np.random.RandomState(0)
    z = rs.normal(0.0, 1.0, (100, 100))
    z[:, 0], z[:, -1] = 1.0, 0.0
    y = uniform_factors((3, 6), 100)
    r = irs_from_codes(z, y)
    assert r.active_dims.tolist() == list(range(1, 99)) and r.num_active_dims == 98
    assert r.score == pytest.approx(irs_from_codes(z[:, 1:-1], y).score, abs=1e-12)
    # One point: every dimension is constant (population variance 0), without a zero-degrees-of-freedom warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop_constant_dims(torch.as_tensor(z[:1])).tolist() == []


def test_irs_collapsed_code_scores_zero():
    # DL's test_bad_metric (zeros representation): no active dims -> IRS 0.0 by definition (irs.compute_irs).
    r = irs(small_data(), lambda x: torch.zeros(x.shape[0], 4, dtype=torch.float64), num_train=500)
    assert r.score == 0.0 and r.num_active_dims == 0 and r.irs_matrix.shape == (0, 3)
    json.dumps(r.as_dict())
    # The empty arrays have the shapes and dtypes of a scored code's, with no active dimension.
    scored = irs_from_codes(np.random.RandomState(0).normal(size=(50, 2)), uniform_factors((3, 6, 10), 50))
    for name in ("irs_matrix", "per_dim", "parents", "max_deviations", "active_dims"):
        empty, full = getattr(r, name), getattr(scored, name)
        assert isinstance(empty, np.ndarray) and empty.dtype == full.dtype, name
        assert empty.shape == (0,) + full.shape[1:], name
    assert r.parents.dtype == r.active_dims.dtype == np.int64 and r.per_dim.dtype == np.float64


def test_irs_data_level_identity_vs_noise():
    data = small_data()
    good = irs(data, identity, num_train=2000)
    assert good.score == pytest.approx(1.0, abs=1e-12) and good.parents.tolist() == [0, 1, 2]
    bad = irs(data, noise(4), num_train=2000)
    # Gaussian noise: the 0.99 quantile of |z - E z| (about 2.6) over the max deviation (about 3.7).
    assert 0.15 < bad.score < 0.45
    # The data level is the codes level on sample_codes' draws (same seed, same factors and codes).
    noisy = lambda x: identity(x) + 0.8 * noise(3, seed=7)(x)
    r = irs(data, noisy, num_train=2000, seed=5)
    assert 0.3 < r.score < 0.95 and r.as_dict() == irs_from_codes(*sample_codes(data, noisy, 2000, 5)).as_dict()
    assert set(good.scalars()) == {"score", "num_active_dims"} and good.scalars()["num_active_dims"] == 3.0
    json.dumps(good.as_dict())


def test_irs_data_level_passes_its_settings_through():
    # 40 classes in the last factor: the binning (num_bins) matters; mixed codes: IRS < 1 depends on the draws.
    data = FactorData((3, 6, 40))
    m = [[1.0, 0.5, 0.0], [0.0, 1.0, -0.4], [0.3, 0.0, 1.0]]
    seen = []
    r = irs(data, counting(mixing(m), seen))
    assert sum(seen) == 10_000  # irs.gin's num_train
    codes, factors = sample_codes(data, mixing(m), 10_000, 0)
    assert r.as_dict() == irs_from_codes(codes, factors, 0.99, 20).as_dict()
    assert r.score != irs_from_codes(codes, factors, 0.99, 21).score
    assert r.score != irs(data, mixing(m), seed=1).score
    # Every argument reaches the score; batch_size = 1 is a valid (and score-neutral) sampling batch.
    small = irs(data, mixing(m), seed=3, num_train=500, batch_size=1, diff_quantile=0.5, num_bins=7)
    assert small.as_dict() == irs_from_codes(*sample_codes(data, mixing(m), 500, 3), 0.5, 7).as_dict()
    assert small.score != irs_from_codes(*sample_codes(data, mixing(m), 500, 3), 0.5, 20).score
    with pytest.raises(MetricError, match="batch_size must be a positive integer"):
        irs(data, mixing(m), num_train=100, batch_size=0)


def test_irs_refuses_bad_input():
    y = uniform_factors((3, 6), 50)
    z = np.random.RandomState(0).normal(size=(50, 2))
    with pytest.raises(MetricError, match="diff_quantile"):
        irs_from_codes(z, y, diff_quantile=1.5)
    with pytest.raises(MetricError, match="diff_quantile"):
        irs_from_codes(z, y, diff_quantile=-0.01)
    for bad in (z[:1], z[:, :0], z[:, 0], z[:, :, None]):  # one point, no dimension, not [N, D]
        with pytest.raises(MetricError, match="at least 2 points"):
            irs_from_codes(bad, y[: len(bad)])
    with pytest.raises(MetricError, match="nan or inf"):
        irs_from_codes(np.where(np.arange(50)[:, None] == 3, np.nan, z), y)
    with pytest.raises(MetricError, match="one row per code"):
        irs_from_codes(z, y[:40])
    with pytest.raises(MetricError, match="has no ground-truth factors"):
        irs(small_data(has_ground_truth=False), identity)


# ================================================================ unsupervised scores
def kl_to_product_of_marginals(cov):
    """KL(N(0, C) || N(0, diag C)) by the textbook formula (DL's kl_gaussians_numerically_unstable)."""
    cov = np.asarray(cov, dtype=np.float64)
    diag = np.diag(np.diag(cov))
    k = cov.shape[0]
    return 0.5 * (np.trace(np.linalg.inv(diag) @ cov) - k + np.log(np.linalg.det(diag) / np.linalg.det(cov)))


def random_cov(d, seed):
    a = np.random.RandomState(seed).normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


def test_total_correlation_oracles():
    # DL's test_gaussian_total_correlation_zero / _same, plus a non-unit diagonal.
    assert gaussian_total_correlation(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    assert gaussian_total_correlation(cov) == pytest.approx(-0.5 * math.log(1 - 0.81), abs=1e-12)
    assert gaussian_total_correlation(cov) == pytest.approx(kl_to_product_of_marginals(cov), abs=1e-10)
    c = random_cov(6, 0)
    by_hand = 0.5 * (np.sum(np.log(np.diag(c))) - np.log(np.linalg.det(c)))
    assert gaussian_total_correlation(c) == pytest.approx(by_hand, abs=1e-10)
    assert gaussian_total_correlation(c) == pytest.approx(kl_to_product_of_marginals(c), abs=1e-10)
    # An integer covariance is computed in float64: 0.5 log(4 / 3) for correlation 1/2.
    assert gaussian_total_correlation([[2, 1], [1, 2]]) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-14)


def test_singular_tolerance_is_scale_free_and_relative_to_the_largest_eigenvalue():
    # Variances 1 and 1e-8 (and 1e8): the correlation matrix is the identity, nothing is singular.
    for cov in (np.diag([1.0, 1e-8]), np.diag([1e8, 1e-8, 1.0])):
        assert gaussian_total_correlation(cov) == pytest.approx(0.0, abs=1e-12)
        assert gaussian_wasserstein_correlation(cov) == pytest.approx(0.0, abs=1e-12)
    # Correlation r: eigenvalues 1 - r and 1 + r ~ 2, so 1 - r is refused below 1e-12 * 2 = 2e-12 only.
    r = 1 - 3e-12
    assert gaussian_total_correlation([[1.0, r], [r, 1.0]]) == pytest.approx(-0.5 * math.log(1 - r * r), rel=1e-3)
    r = 1 - 1.5e-12
    for score in (gaussian_total_correlation, gaussian_wasserstein_correlation):
        with pytest.raises(MetricError, match="singular"):
            score([[1.0, r], [r, 1.0]])


def test_wasserstein_correlation_oracles():
    # DL's test_gaussian_wasserstein_correlation_zero, for any diagonal covariance.
    assert gaussian_wasserstein_correlation(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_wasserstein_correlation(np.diag([0.1, 4.0, 9.0])) == pytest.approx(0.0, abs=1e-12)
    # 2 x 2 closed form: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M = diag(c) C, so
    # W = 2 (c1 + c2) - 2 sqrt(c1^2 + c2^2 + 2 sqrt(c1 c2 det C)). C = [[4, 1], [1, 1]]: det M = 12.
    assert gaussian_wasserstein_correlation([[4.0, 1.0], [1.0, 1.0]]) == pytest.approx(
        10 - 2 * math.sqrt(17 + 2 * math.sqrt(12)), abs=1e-12
    )
    # The same integer matrix is computed in float64 too.
    assert gaussian_wasserstein_correlation([[4, 1], [1, 1]]) == pytest.approx(
        10 - 2 * math.sqrt(17 + 2 * math.sqrt(12)), abs=1e-12
    )
    # DL's test_gaussian_wasserstein_correlation_same (trace(C + diag C - 2 sqrtm(C diag C))), on a larger C.
    for cov in (np.array([[1.0, 0.9], [0.9, 1.0]]), random_cov(5, 1)):
        diag = np.diag(np.diag(cov))
        shouldbe = np.trace(cov + diag - 2 * scipy.linalg.sqrtm(cov @ diag)).real
        assert gaussian_wasserstein_correlation(cov) == pytest.approx(shouldbe, abs=1e-9)


def test_unsupervised_from_codes_matches_formulas_on_correlated_codes():
    # N = 30 so a population (ddof = 0) covariance would move W by 1/29: DL's np.cov uses ddof = 1.
    rs = np.random.RandomState(3)
    z = rs.normal(size=(30, 4)) @ random_cov(4, 2)
    cov = np.cov(z.T)
    r = unsupervised_from_codes(z)
    assert r.score == r.gaussian_total_correlation
    assert r.gaussian_total_correlation == pytest.approx(kl_to_product_of_marginals(cov), abs=1e-10)
    w = np.trace(cov + np.diag(np.diag(cov)) - 2 * scipy.linalg.sqrtm(cov @ np.diag(np.diag(cov)))).real
    assert r.gaussian_wasserstein_correlation == pytest.approx(w, abs=1e-9)
    assert r.gaussian_wasserstein_correlation_norm == pytest.approx(w / np.trace(cov), abs=1e-10)
    np.testing.assert_allclose(r.covariance, cov, atol=1e-12)
    # covariance() itself: numpy.cov in float64, also of integer codes.
    ints = rs.randint(-5, 6, size=(30, 3))
    got = covariance(ints)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np.cov(ints.T), atol=1e-12)
    # Two dimensions and two points pass the shape check: 2 x 2 codes are refused only as singular (rank 1).
    two = unsupervised_from_codes(z[:, :2])
    assert two.covariance.shape == (2, 2) and two.mutual_info.shape == (2, 2)
    with pytest.raises(MetricError, match="singular"):
        unsupervised_from_codes(z[:2, :2])


def test_mutual_info_score_matches_sklearn_on_histogram_bins():
    # DL: bins = np.digitize(z, np.histogram(z, 20)[1][:-1]) per dim, MI by sklearn, diagonal zeroed,
    # mean over the D^2 - D off-diagonal entries.
    rs = np.random.RandomState(4)
    z = rs.normal(size=(3000, 4))
    z[:, 1] = z[:, 0] ** 3 + 0.3 * z[:, 1]  # strongly dependent, not linearly: covariance stays regular
    mi = histogram_mi(z, 20)
    r = unsupervised_from_codes(z)
    np.testing.assert_allclose(r.mutual_info, mi, atol=1e-10)
    assert r.mutual_info_score == pytest.approx(mi.sum() / 12, abs=1e-12)
    assert r.mutual_info[0, 1] > 10 * r.mutual_info[2, 3]
    # mutual_info_score: 20 bins by default; num_bins reaches the binning at both levels.
    score, matrix = binned_mutual_info_score(z)
    assert score == pytest.approx(mi.sum() / 12, abs=1e-12)
    np.testing.assert_allclose(matrix.numpy(), mi, atol=1e-10)
    mi5 = histogram_mi(z, 5)
    score, matrix = binned_mutual_info_score(z, 5)
    assert score == pytest.approx(mi5.sum() / 12, abs=1e-12) and score != pytest.approx(mi.sum() / 12, rel=1e-3)
    np.testing.assert_allclose(matrix.numpy(), mi5, atol=1e-10)
    five = unsupervised_from_codes(z, num_bins=5)
    np.testing.assert_allclose(five.mutual_info, mi5, atol=1e-10)
    assert five.mutual_info_score == pytest.approx(mi5.sum() / 12, abs=1e-12)


def test_unsupervised_invariances():
    rs = np.random.RandomState(5)
    z = rs.normal(size=(2000, 5)) @ random_cov(5, 3)
    base = unsupervised_from_codes(z)
    perm = np.array([3, 1, 4, 0, 2])
    scale = np.array([2.0, 0.5, 4.0, 1.0, 0.25])  # powers of two: the histogram bins move exactly
    moved = unsupervised_from_codes(z[:, perm] * scale)
    # TC and the binned MI ignore per-dimension scale and order; W does not.
    assert moved.gaussian_total_correlation == pytest.approx(base.gaussian_total_correlation, abs=1e-10)
    assert moved.mutual_info_score == pytest.approx(base.mutual_info_score, abs=1e-12)
    assert moved.gaussian_wasserstein_correlation != pytest.approx(base.gaussian_wasserstein_correlation, rel=1e-3)
    # A global scale s multiplies W by s^2 and leaves the normalised W unchanged.
    twice = unsupervised_from_codes(3.0 * z)
    assert twice.gaussian_wasserstein_correlation == pytest.approx(9 * base.gaussian_wasserstein_correlation, rel=1e-10)
    assert twice.gaussian_wasserstein_correlation_norm == pytest.approx(
        base.gaussian_wasserstein_correlation_norm, rel=1e-10
    )
    # Scales far apart (variances 1e8 and 1e-8 of each other) are no singularity: TC is unchanged.
    spread = unsupervised_from_codes(z * np.array([1e4, 1e-4, 1.0, 1.0, 1.0]))
    assert spread.gaussian_total_correlation == pytest.approx(base.gaussian_total_correlation, abs=1e-8)


def test_unsupervised_data_level_tc_of_a_known_mixing():
    # Uniform factors of sizes s have variance (s^2 - 1) / 12 and are independent, so codes y @ M have
    # covariance M^T diag(var) M: its TC is the population value the sample estimate approaches.
    data = small_data()
    m = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -0.4], [0.3, 0.0, 1.0]])
    represent = lambda x: x.flatten(1) @ torch.as_tensor(m)
    var = (np.array([3, 6, 10]) ** 2 - 1) / 12
    cov = m.T @ np.diag(var) @ m
    tc = 0.5 * (np.sum(np.log(np.diag(cov))) - np.log(np.linalg.det(cov)))
    r = unsupervised(data, represent, num_train=5000)
    assert tc > 0.1 and r.score == pytest.approx(tc, abs=0.02)
    independent = unsupervised(data, identity, num_train=5000)
    assert abs(independent.score) < 0.005 and abs(independent.gaussian_wasserstein_correlation) < 0.02
    same = unsupervised_from_codes(sample_codes(data, represent, 5000, 0)[0])
    assert same.as_dict() == r.as_dict()
    # The defaults (num_train 10,000, seed 0, 20 bins) and every argument reach the scores.
    seen = []
    full = unsupervised(data, counting(represent, seen))
    assert sum(seen) == 10_000
    assert full.as_dict() == unsupervised_from_codes(sample_codes(data, represent, 10_000, 0)[0], 20).as_dict()
    other = unsupervised(data, represent, seed=3, num_train=500, num_bins=5)
    codes = sample_codes(data, represent, 500, 3)[0]
    assert other.as_dict() == unsupervised_from_codes(codes, 5).as_dict()
    assert other.score != unsupervised_from_codes(sample_codes(data, represent, 500, 0)[0], 5).score
    assert other.mutual_info_score != unsupervised_from_codes(codes, 20).mutual_info_score
    assert list(r.scalars()) == [
        "score",
        "gaussian_total_correlation",
        "gaussian_wasserstein_correlation",
        "gaussian_wasserstein_correlation_norm",
        "mutual_info_score",
    ]
    json.dumps(r.as_dict())


def test_unsupervised_refuses_bad_input():
    rs = np.random.RandomState(6)
    z = rs.normal(size=(100, 3))
    with pytest.raises(MetricError, match=r"dimension\(s\) \[1\] are constant"):
        unsupervised_from_codes(np.concatenate([z[:, :1], np.ones((100, 1)), z[:, 1:]], 1))
    with pytest.raises(MetricError, match="singular"):
        unsupervised_from_codes(np.concatenate([z, z[:, :1] - 2 * z[:, 1:2]], 1))
    for bad in (z[:, :1], z[:1], z[:, 0], z[:, :, None]):  # one dimension, one point, not [N, D]
        with pytest.raises(MetricError, match="at least 2 points and 2 dimensions"):
            unsupervised_from_codes(bad)
    with pytest.raises(MetricError, match="nan or inf"):
        unsupervised_from_codes(np.where(z > 2.5, np.inf, z))
    with pytest.raises(MetricError, match="has no ground-truth factors"):
        unsupervised(small_data(has_ground_truth=False), identity)
