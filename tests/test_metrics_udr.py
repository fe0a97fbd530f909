"""UDR: disentanglement_lib's udr_test.py cases, exact values on full-factorial codes, hand-derived pairs, the data protocol."""

import itertools
import json
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from sbvae.datasets.base import GroundTruthData
from sbvae.metrics.udr import (
    UDRModelResult,
    gaussian_kl,
    lasso_matrix,
    relative_strength,
    spearman_matrix,
    udr,
    udr_from_codes,
)
from sbvae.metrics.utils import MetricError


class NoiseImages(GroundTruthData):
    """DL's DummyData: every image is uniform noise, so the first 10 pixels are 10 independent latents."""

    factor_sizes = (5,) * 10
    factor_names = tuple(f"f{i}" for i in range(10))
    channels, image_size = 1, 4

    def render(self, factors, generator=None):
        return torch.rand(factors.shape[0], 1, 4, 4, generator=generator, dtype=torch.float64).to(factors.device)

    def factor_values(self, factors):
        return factors.double()


PERM = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
SIGNS = torch.tensor([1.0, -1, 1, -1, -1, 1, 1, -1, 1, 1]) * torch.linspace(0.5, 3.0, 10)


def pixels(x):
    return x.flatten(1)[:, :10], torch.zeros(x.shape[0], 10, dtype=x.dtype)


def permuted(x):  # the same latents, permuted, sign-flipped and rescaled
    mean, logvar = pixels(x)
    return mean[:, PERM] * SIGNS.to(x.dtype), logvar


def grid(levels=6, dims=2):
    """Full factorial [levels^dims, dims]: every pair of columns has exactly zero (rank) correlation."""
    return np.array(list(itertools.product(range(levels), repeat=dims)), dtype=np.float64)


ONES = np.ones(2)


# ---------------------------------------------------------------- DL's unit tests, tightened where the value is known
@pytest.mark.parametrize(
    "matrix, expected",
    [
        (np.eye(3), 1.0),
        ([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 2.0 / 3.0),  # DL: in (0.6, 0.7)
        (np.ones((3, 3)), 1.0 / 3.0),  # DL: in (0.3, 0.4)
        (np.zeros((3, 3)), 0.0),
        # by hand: columns 1/1, 0.25/1 -> 0.625; rows 1/1.5, 0.25/0.5 -> 7/12
        ([[1.0, 0.5], [0.0, 0.5]], (0.625 + 7.0 / 12.0) / 2),
        # a nan line (constant dimension under Spearman) and every line crossing it score 0
        ([[1.0, np.nan], [0.0, np.nan]], 0.25),
        (np.zeros((2, 0)), 0.0),  # no informative latent on one side: DL raises, sbvae scores 0
    ],
    ids=["identity", "block", "ones", "zeros", "by-hand", "nan-line", "empty"],
)
def test_relative_strength_oracle(matrix, expected):
    assert relative_strength(matrix) == pytest.approx(expected, abs=1e-12)


def test_spearman_matrix_dl_cases_and_scipy():
    rs = np.random.RandomState(0)
    vec1 = rs.random_sample((1000, 3))
    assert np.allclose(spearman_matrix(vec1, vec1.copy()), np.eye(3), atol=0.1)
    vec1 = rs.random_sample((1000, 3))
    vec2 = vec1.copy()
    vec2[:, 1] = vec2[:, 0]
    assert np.allclose(spearman_matrix(vec1, vec2), [[1, 1, 0], [0, 0, 0], [0, 0, 1]], atol=0.1)
    # Every entry is |scipy.stats.spearmanr| of the pair, rows indexing the first argument, ties included.
    a, b = rs.randint(0, 4, (200, 3)).astype(float), rs.randint(0, 5, (200, 4)).astype(float)
    b[:, 2] = a[:, 1] * 2 - rs.randint(0, 2, 200)
    expected = np.array([[abs(scipy.stats.spearmanr(a[:, i], b[:, j])[0]) for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(spearman_matrix(a, b), expected, atol=1e-12)
    assert expected[1, 2] > 0.8


def test_lasso_matrix_dl_cases():
    rs = np.random.RandomState(0)
    vec1 = rs.random_sample((1000, 3)) * 10.0
    got = lasso_matrix(vec1, vec1.copy())
    assert np.allclose(got, np.eye(3), atol=0.2)
    # Unstandardized: the soft threshold shrinks each coefficient by alpha / var = 0.1 / (100 / 12).
    np.testing.assert_allclose(np.diag(got), 1 - 0.1 / vec1.var(0), atol=2e-3)
    vec1 = rs.random_sample((1000, 3)) * 10.0
    vec2 = vec1.copy()
    vec2[:, 1] = vec2[:, 0]
    assert np.allclose(lasso_matrix(vec1, vec2), [[1, 1, 0], [0, 0, 0], [0, 0, 1]], atol=0.2)


@pytest.mark.parametrize("correlation, low, high", [("lasso", 0.89, 0.901), ("spearman", 0.8, 1.0)])
def test_dl_metric_permutation_sign_inverse(correlation, low, high):
    # DL's test_metric_lasso / test_metric_spearman (both assert 0.8..1.0). Lasso's alpha = 0.1 on
    # standardized codes caps a perfectly matched coefficient at 0.9, so identical models score 0.9 there.
    result = udr(NoiseImages(), [pixels, permuted], num_data_points=1000, batch_size=10, correlation=correlation)
    assert all(low <= s <= high for s in result.scores), result.scores
    assert result.score == pytest.approx(result.scores.mean())
    assert result.informative.all() and result.raw_correlations.shape == (2, 2, 10, 10)
    # the raw matrix pairs pixel d of model 0 with its own image in model 1
    assert (result.raw_correlations[0, 1].argmax(axis=1) == np.argsort(PERM)).all()
    assert (result.raw_correlations[1, 0].argmax(axis=1) == PERM).all()  # rows: the regressor model's latents


def test_dl_metric_kl_filter():
    # DL's test_metric_kl: only latent 0 is informative (the others are tiny noise, mean KL < 0.01).
    def encoder(seed):
        gen = torch.Generator().manual_seed(seed)

        def encode(x):
            noise = 0.01 * torch.randn(x.shape[0], 9, generator=gen, dtype=x.dtype)
            return torch.cat([x.flatten(1)[:, :1], noise], dim=1), torch.zeros(x.shape[0], 10, dtype=x.dtype)

        return encode

    kwargs = {"num_data_points": 1000, "batch_size": 10}
    # DL asserts 0..0.2: unfiltered, the 9 dead dimensions (zeroed) count as empty lines: 0.9 * 1/10.
    unfiltered = udr(NoiseImages(), [encoder(1), encoder(2)], filter_low_kl=False, **kwargs)
    np.testing.assert_allclose(unfiltered.scores, 0.09, atol=1e-3)
    # DL asserts 0.8..1.0: filtered, a 1x1 matrix holding the Lasso coefficient 0.9.
    filtered = udr(NoiseImages(), [encoder(1), encoder(2)], filter_low_kl=True, **kwargs)
    np.testing.assert_allclose(filtered.scores, 0.9, atol=1e-3)
    assert filtered.informative.tolist() == [[True] + [False] * 9] * 2


# ---------------------------------------------------------------- exact values on codes
def test_permutations_sign_flips_scalings_score_exactly():
    g = grid(5, 3)  # exactly uncorrelated latents
    codes = [g, -3.0 * g[:, [2, 0, 1]], np.exp(g[:, [1, 2, 0]]) * [1.0, -2.0, 0.5]]  # spearman: monotone maps too
    kls = [np.ones(3)] * 3
    spearman = udr_from_codes(codes, kls, correlation="spearman")
    np.testing.assert_allclose(spearman.scores, 1.0, atol=1e-12)
    linear = udr_from_codes(codes[:2] + [g[:, [1, 0, 2]] * 7.0 + 1.0], kls, correlation="lasso")
    np.testing.assert_allclose(linear.scores, 0.9, atol=1e-4)  # standardized: coefficient 1 - alpha
    np.testing.assert_allclose(np.diag(linear.pairwise), 0.0)


def test_identical_models():
    rs = np.random.RandomState(3)
    z = rs.randn(1000, 6)
    result = udr_from_codes([z, z, z], [np.ones(6)] * 3, correlation="lasso")
    np.testing.assert_allclose(result.raw_correlations[0, 1], 0.9 * np.eye(6), atol=5e-3)
    np.testing.assert_allclose(result.scores, 0.9, atol=1e-3)
    g = grid(4, 3)
    assert udr_from_codes([g, g], [np.ones(3)] * 2, correlation="spearman").score == pytest.approx(1.0, abs=1e-12)


def test_independent_noise_scores_near_zero():
    rs = np.random.RandomState(0)
    codes = [rs.randn(1000, 10) for _ in range(4)]
    kls = [np.ones(10)] * 4
    lasso = udr_from_codes(codes, kls, correlation="lasso")
    assert lasso.score < 0.02  # sample correlations ~0.03 fall under the soft threshold 0.1
    spearman = udr_from_codes(codes, kls, correlation="spearman")
    assert spearman.score < 0.05  # max^2 / sum of ~|N(0, 1/1000)| entries


def test_median_ranks_the_outlier_of_a_group():
    rs = np.random.RandomState(1)
    z = rs.randn(1000, 5)
    codes = [z, 2 * z[:, ::-1], -z[:, [1, 0, 2, 4, 3]], rs.randn(1000, 5)]
    result = udr_from_codes(codes, [np.ones(5)] * 4)
    # Each good model: median of (0.9, 0.9, ~0) = 0.9, where a mean would give 0.6; the stray one ~0.
    np.testing.assert_allclose(result.scores[:3], 0.9, atol=5e-3)
    assert result.scores[3] < 0.02
    assert result.score == pytest.approx(result.scores.mean())


def test_hand_derived_pair_and_column_median():
    """A = (g1, g2), C = (g1, g1) on a full grid (g1, g2 exactly uncorrelated, standardized)."""
    g = grid(6, 2)
    a, c = g, g[:, [0, 0]]
    # Lasso C on A: both targets get 0.9 on g1 -> rows [.9 .9], [0 0]: columns .9, rows (.45 + 0) / 2 -> 0.5625.
    # Lasso A on C: cyclic descent puts g1 on C's first copy only -> [[.9, 0], [0, 0]] -> 0.45.
    lasso = udr_from_codes([a, c], [ONES, ONES], correlation="lasso")
    np.testing.assert_allclose(lasso.pairwise, [[0.0, 0.5625], [0.45, 0.0]], atol=1e-4)
    # A model's UDR is the median of its column: the pairs where it is the regression target.
    np.testing.assert_allclose(lasso.scores, [0.45, 0.5625], atol=1e-4)
    assert lasso.score == pytest.approx((0.45 + 0.5625) / 2, abs=1e-4)
    # Spearman A -> C = [[1, 1], [0, 0]]: columns 1, rows (0.5 + 0) / 2 -> 0.625, and symmetric.
    spearman = udr_from_codes([a, c], [ONES, ONES], correlation="spearman")
    np.testing.assert_allclose(spearman.pairwise, [[0.0, 0.625], [0.625, 0.0]], atol=1e-12)


def test_collapsed_dimension_is_filtered():
    g = grid(6, 2)
    a, c = g, np.stack([g[:, 0], np.zeros(len(g))], axis=1)  # C's second latent collapsed
    kls = [ONES, np.array([1.0, 0.0])]
    # Filtered, C keeps one column: A -> C = [[x], [0]] with x = 1 (spearman) or 0.9 (lasso).
    spearman = udr_from_codes([a, c], kls, correlation="spearman")
    np.testing.assert_allclose(spearman.scores, 0.75, atol=1e-12)  # columns 1, rows (1 + 0) / 2
    lasso = udr_from_codes([a, c], kls, correlation="lasso")
    np.testing.assert_allclose(lasso.scores, (0.9 + 0.45) / 2, atol=1e-4)  # columns .81/.9, rows (.9 + 0) / 2
    assert lasso.informative.tolist() == [[True, True], [True, False]]
    # Unfiltered, DL zeroes it but keeps its line: an empty lasso line, a nan spearman line that poisons its crossings.
    np.testing.assert_allclose(udr_from_codes([a, c], kls, "lasso", filter_low_kl=False).scores, 0.45, atol=1e-4)
    np.testing.assert_allclose(udr_from_codes([a, c], kls, "spearman", filter_low_kl=False).scores, 0.25, atol=1e-12)


def test_zeroing_uses_dls_fixed_001_not_the_filter_threshold():
    g = grid(6, 2)
    c = g.copy()  # every latent informative in the codes; only the KL differs
    weak = udr_from_codes(
        [g, c], [ONES, np.array([1.0, 0.3])], "spearman", filter_low_kl=False, kl_filter_threshold=0.5
    )
    assert weak.score == pytest.approx(1.0, abs=1e-12) and not weak.informative[1, 1]  # 0.3 > 0.01: kept
    dead = udr_from_codes(
        [g, c], [ONES, np.array([1.0, 0.005])], "spearman", filter_low_kl=True, kl_filter_threshold=0.001
    )
    assert dead.informative[1, 1] and dead.score == pytest.approx(0.25, abs=1e-12)  # zeroed, kept: a nan line


# ---------------------------------------------------------------- the data protocol
def test_all_models_see_the_same_images_and_kl_is_dls():
    seen = {0: [], 1: []}

    def recording(index, logvar):
        def encode(x):
            seen[index].append(x.clone())
            mean = x.flatten(1)[:, :10] * (index + 1)
            return mean, torch.full_like(mean, logvar)

        return encode

    kwargs = {"num_data_points": 200, "batch_size": 10, "include_raw_correlations": False}
    result = udr(NoiseImages(), [recording(0, -1.0), recording(1, 0.5)], chunk_size=64, **kwargs)  # 64, 64, 64, 8
    assert [x.shape[0] for x in seen[0]] == [64, 64, 64, 8]
    images = torch.cat(seen[0])
    assert torch.equal(images, torch.cat(seen[1]))
    for m, (scale, lv) in enumerate([(1.0, -1.0), (2.0, 0.5)]):
        mu = images.flatten(1)[:, :10].numpy() * scale
        expected = np.mean(0.5 * (mu**2 + np.exp(lv) - 1.0 - lv), axis=0)  # evaluate.py's compute_gaussian_kl
        np.testing.assert_allclose(result.kl[m], expected, rtol=1e-12)
        np.testing.assert_allclose(gaussian_kl(mu, np.full_like(mu, lv)), expected, rtol=1e-12)
    assert result.raw_correlations is None
    again = udr(NoiseImages(), [recording(0, -1.0), recording(1, 0.5)], chunk_size=200, **kwargs)
    np.testing.assert_array_equal(again.pairwise, result.pairwise)  # chunking changes nothing
    assert torch.equal(torch.cat(seen[0][4:]), images)
    other = udr(NoiseImages(), [pixels, permuted], seed=1, **kwargs)
    base = udr(NoiseImages(), [pixels, permuted], seed=0, **kwargs)
    assert not np.array_equal(other.pairwise, base.pairwise)


def test_result_serializes_and_logs():
    result = udr_from_codes([grid(4, 2)] * 3, [ONES] * 3, correlation="spearman")
    record = json.loads(json.dumps(result.as_dict()))
    assert record["scores"] == pytest.approx([1.0] * 3) and len(record["raw_correlations"]) == 3
    assert record["correlation"] == "spearman"
    assert list(result.scalars()) == ["score", "model_0", "model_1", "model_2"]


def test_errors_name_the_fix():
    with pytest.raises(MetricError, match="--replicas 2"):
        udr_from_codes([grid()], [ONES])
    with pytest.raises(MetricError, match="--replicas 2"):
        udr(NoiseImages(), [pixels])
    with pytest.raises(MetricError, match="same latent size"):
        udr_from_codes([grid(4, 2), grid(4, 2)[:, :1]], [ONES, np.ones(1)])
    with pytest.raises(MetricError, match="one KL vector per model"):
        udr_from_codes([grid(), grid()], [ONES])
    with pytest.raises(MetricError, match="'lasso' or 'spearman'"):
        udr_from_codes([grid(), grid()], [ONES, ONES], correlation="pearson")
    with pytest.raises(MetricError, match="multiple of batch_size"):
        udr(NoiseImages(), [pixels, permuted], num_data_points=105, batch_size=10)
    with pytest.raises(MetricError, match=r"\(mean \[n, D\], logvar \[n, D\]\)"):
        udr(NoiseImages(), [pixels, lambda x: x.flatten(1)], num_data_points=20)
    with pytest.raises(MetricError, match="nan or inf"):
        udr_from_codes([grid(), np.full((36, 2), np.nan)], [ONES, ONES])


@pytest.mark.parametrize(
    "codes, kls, message",
    [
        ([np.zeros((1, 2))] * 2, [ONES] * 2, r"N >= 2 per model, got shape \(1, 2\)"),
        ([np.arange(36.0)] * 2, [np.ones(1)] * 2, r"N >= 2 per model, got shape \(36,\)"),
        ([np.zeros((36, 2, 1))] * 2, [ONES] * 2, r"N >= 2 per model, got shape \(36, 2, 1\)"),
        ([np.zeros((36, 0))] * 2, [np.ones(0)] * 2, r"N >= 2 per model, got shape \(36, 0\)"),
        ([grid(), np.arange(36.0)], [ONES] * 2, r"model 0 has codes \(36, 2\), model 1 \(36,\)"),
        ([grid(), grid()], [ONES, np.ones(3)], r"\(2 per model\); model 1 has 3 values"),
        ([grid(), grid()], [ONES, [1.0, np.nan]], r"\(2 per model\); model 1 has 2 values"),
        ([grid(), grid()], [ONES, [np.inf, 1.0]], r"\(2 per model\); model 1 has 2 values"),
    ],
    ids=["one-point", "1d", "3d", "no-latent", "shape-differs", "kl-length", "kl-nan", "kl-inf"],
)
def test_each_code_check_names_its_problem(codes, kls, message):
    with pytest.raises(MetricError, match=message):
        udr_from_codes(codes, kls)


def test_smallest_valid_codes_two_points_one_latent_and_kl_rows():
    # N = 2: every pair of columns ranks [1, 2] or [2, 1], |rho| = 1 everywhere -> relative strength 1/2.
    two = udr_from_codes([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 5.0], [3.0, 4.0]]], [ONES] * 2, "spearman")
    assert two.score == pytest.approx(0.5, abs=1e-12)
    one = grid(6, 1)  # D = 1
    assert udr_from_codes([one, -one], [np.ones(1)] * 2, "spearman").score == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(udr_from_codes([one, 2 * one], [np.ones(1)] * 2, "lasso").scores, 0.9, atol=1e-9)
    # a KL row [1, D] (a batch-reduced tensor) is that model's KL vector
    rows = udr_from_codes([grid(), grid()], [torch.ones(1, 2), np.array([[1.0, 0.5]])], "spearman")
    assert rows.kl.tolist() == [[1.0, 1.0], [1.0, 0.5]]


def test_kl_boundaries_zeroing_and_informative():
    g = grid(6, 2)
    # mean KL exactly 0.01 is dead (DL zeroes KL <= 0.01): a zero column, a nan Spearman line when unfiltered
    dead = udr_from_codes([g, g.copy()], [ONES, np.array([1.0, 0.01])], "spearman", filter_low_kl=False)
    assert dead.score == pytest.approx(0.25, abs=1e-12)
    alive = udr_from_codes([g, g.copy()], [ONES, np.array([1.0, 0.0101])], "spearman", filter_low_kl=False)
    assert alive.score == pytest.approx(1.0, abs=1e-12)
    # exactly at kl_filter_threshold is not informative (mean KL > threshold)
    edge = udr_from_codes([g, g.copy()], [ONES, np.array([1.0, 0.3])], "spearman", kl_filter_threshold=0.3)
    assert edge.informative.tolist() == [[True, True], [True, False]]
    assert edge.score == pytest.approx(0.75, abs=1e-12)  # A -> C's first column only: columns 1, rows (1 + 0) / 2


@pytest.mark.parametrize("correlation", ["lasso", "spearman"])
def test_raw_correlations_diagonal_is_zero_and_spearman_is_transposed(correlation):
    rs = np.random.RandomState(5)
    z = rs.randn(60, 3)
    codes = [z, z[:, [2, 0, 1]] + 0.3 * rs.randn(60, 3), rs.randn(60, 3)]
    result = udr_from_codes(codes, [np.ones(3)] * 3, correlation)
    raw = result.raw_correlations
    for i in range(3):
        assert not raw[i, i].any()  # no model is compared with itself
        for j in range(3):
            if i != j:
                expected = spearman_matrix(codes[i], codes[j]) if correlation == "spearman" else None
                if expected is not None:
                    np.testing.assert_allclose(raw[i, j], expected, atol=1e-12)
                    np.testing.assert_array_equal(raw[j, i], raw[i, j].T)
                assert raw[i, j].any()


def test_spearman_never_exceeds_one():
    x = np.arange(17.0)[:, None]  # unclipped, 17 equal rankings give 1 + 2e-16 by rounding
    assert spearman_matrix(x, x)[0, 0] == 1.0
    assert spearman_matrix(x, -x)[0, 0] == 1.0
    assert udr_from_codes([x, 3 * x], [np.ones(1)] * 2, "spearman").pairwise[0, 1] == 1.0


def test_zero_and_constant_lines_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert relative_strength(np.zeros((3, 3))) == 0.0
        assert relative_strength([[1.0, 0.0], [0.0, 0.0]]) == pytest.approx(0.5, abs=1e-12)
        g = grid(4, 2)
        const = np.stack([g[:, 0], np.full(len(g), 2.0)], axis=1)
        corr = spearman_matrix(const, g)
        assert np.isnan(corr[1]).all() and corr[0] == pytest.approx([1.0, 0.0], abs=1e-12)
        assert udr_from_codes([g, const], [ONES] * 2, "spearman", filter_low_kl=False).score == pytest.approx(0.25)


def test_computed_in_float64_whatever_the_input_precision():
    rs = np.random.RandomState(7)
    mu, lv = rs.randn(50, 3).astype(np.float32), (0.3 * rs.randn(50, 3)).astype(np.float32)
    kl = gaussian_kl(mu, lv)
    assert kl.dtype == np.float64
    np.testing.assert_array_equal(kl, gaussian_kl(mu.astype(np.float64), lv.astype(np.float64)))
    a = rs.randn(80, 3).astype(np.float32)
    b = (a @ rs.randn(3, 2) + 0.5 * rs.randn(80, 2)).astype(np.float32)
    np.testing.assert_array_equal(lasso_matrix(a, b), lasso_matrix(a.astype(np.float64), b.astype(np.float64)))
    m = rs.rand(4, 5).astype(np.float32)
    assert relative_strength(m) == relative_strength(m.astype(np.float64))
    # codes and KLs given in float32 (or ints) are compared as their float64 values
    codes32 = [a, (a[:, [1, 2, 0]] + 0.4 * rs.randn(80, 3)).astype(np.float32)]
    kls = [np.array([1.1, 2.0, 3.0], dtype=np.float32), np.array([1.5, 0.25, 2.0], dtype=np.float32)]
    got = udr_from_codes(codes32, kls, "lasso")
    want = udr_from_codes([c.astype(np.float64) for c in codes32], [k.astype(np.float64) for k in kls], "lasso")
    np.testing.assert_array_equal(got.pairwise, want.pairwise)
    assert got.kl.dtype == np.float64 and got.kl.tolist() == want.kl.tolist()
    ints = udr_from_codes([[[0, 1], [1, 0], [2, 2]]] * 2, [[1, 2], [2, 1]], "spearman")
    assert ints.kl.dtype == np.float64 and ints.kl.tolist() == [[1.0, 2.0], [2.0, 1.0]]


class Fixed(GroundTruthData):
    """20 fixed images, whatever the factors: encoders get the same batch every call."""

    factor_sizes = (5,)
    factor_names = ("f0",)
    channels, image_size = 1, 4

    def render(self, factors, generator=None):
        return torch.linspace(-1, 1, factors.shape[0] * 16, dtype=torch.float64).view(-1, 1, 4, 4) ** 3

    def factor_values(self, factors):
        return factors.double()


def _bad(out):
    return lambda x: out(x.flatten(1)[:, :3])


@pytest.mark.parametrize(
    "second, message",
    [
        (_bad(lambda z: (z, z, z)), "encoder 1 must map images"),  # (mean, logvar, sample)
        (_bad(lambda z: [z[..., None], z[..., None]]), "encoder 1 must map images"),  # [n, D, 1]
        (_bad(lambda z: (z[:, 0], z[:, 0])), "encoder 1 must map images"),  # [n]
        (_bad(lambda z: (z, z[:, :2])), "encoder 1 must map images"),  # logvar of another size
        (_bad(lambda z: (z[:-1], z[:-1])), "encoder 1 must map images"),  # one row short
        (_bad(lambda z: (z.numpy(), z.numpy())), "encoder 1 must map images"),  # not tensors
        (_bad(lambda z: torch.stack([z, z])), "encoder 1 must map images"),  # one stacked tensor
        (_bad(lambda z: (z.clone().fill_(float("nan")), z)), "encoder 1 returned nan or inf"),
        (_bad(lambda z: (z, z.clone().fill_(float("inf")))), "encoder 1 returned nan or inf"),
    ],
    ids=["triple", "3d", "1d", "logvar-size", "rows", "numpy", "stacked", "nan-mean", "inf-logvar"],
)
def test_encoder_outputs_are_checked(second, message):
    first = _bad(lambda z: (z, torch.zeros_like(z)))
    with pytest.raises(MetricError, match=message):
        udr(Fixed(), [first, second], num_data_points=20, batch_size=10)


def test_float32_encoders_get_a_float64_kl():
    def encode(x):
        z = x.flatten(1)[:, :3].float() * torch.tensor([1.0, 3.0, 0.5])
        return z, (0.1 * z - 0.2).float()

    result = udr(Fixed(), [encode, encode], num_data_points=20, batch_size=10, chunk_size=20, correlation="spearman")
    mean, logvar = encode(Fixed().render(torch.zeros(20, 1)))
    expected = gaussian_kl(mean.double().numpy(), logvar.double().numpy())
    in_float32 = (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)).mean(0).numpy()
    assert not np.allclose(in_float32, expected, rtol=1e-12, atol=0)  # the precision the test can tell apart
    np.testing.assert_allclose(result.kl, [expected, expected], rtol=1e-14)


def test_for_model_is_one_models_share():
    g = grid(4, 2)
    codes = [g, g[:, [1, 0]] * -2.0, np.stack([g[:, 0], g[:, 0] + g[:, 1]], axis=1)]
    result = udr_from_codes(codes, [ONES, np.array([1.0, 0.005]), ONES], correlation="spearman")
    assert len(set(result.scores.round(9))) == 3  # three different UDRs, so the index matters
    for k in range(3):
        share = result.for_model(k)
        assert isinstance(share, UDRModelResult)
        assert share.score == result.scores[k] and type(share.score) is float
        assert share.model == k and share.group_size == 3 and share.correlation == "spearman"
        assert share.group_mean == result.score and type(share.group_mean) is float
        np.testing.assert_array_equal(share.pairwise, result.pairwise[:, k])
        assert share.pairwise[k] == 0.0
        assert share.informative_dims == [2, 1, 2][k] and type(share.informative_dims) is int
    share = result.for_model(1)
    share.pairwise[0] = 7.0  # its own copy
    assert result.pairwise[0, 1] != 7.0
    record = json.loads(json.dumps(share.as_dict()))
    assert record["score"] == pytest.approx(result.scores[1]) and record["model"] == 1
    assert share.scalars() == {
        "score": share.score,
        "model": 1.0,
        "group_size": 3.0,
        "group_mean": share.group_mean,
        "informative_dims": 1.0,
    }
    lasso = udr_from_codes(codes[:2], [ONES] * 2).for_model(0)
    assert lasso.correlation == "lasso" and lasso.group_size == 2
