"""The metrics' shared protocol (seeded draws, defaults) and every field of their results, on cases worked out
by hand or by scikit-learn / numpy directly (METRICS.md), so a wrong seed, size or field shows as a wrong number."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from metric_fakes import FactorData, identity, mig_by_hand
from sbvae import metrics as M
from sbvae.metrics.factor_vae import sample_vote_factors
from sbvae.metrics.sap import continuous_score_matrix, discrete_score_matrix, top_two_gap
from sbvae.metrics.utils import encode_groups, resolve_device


class JitterData(FactorData):
    """Renders factor k as its class index plus a uniform draw in [0, 1) from the render generator, the way
    binned continuous factors are jittered (bin centre, + 0.5, without a generator)."""

    def render(self, factors, generator=None):
        if generator is None:
            u = torch.full(factors.shape, 0.5, dtype=torch.float64)
        else:
            u = torch.rand(factors.shape, generator=generator, dtype=torch.float64)
        return (factors.double() + u)[:, :, None, None]


SIZES = (3, 6, 10)


def jitter_data():
    return JitterData(SIZES, factor_names=("a", "b", "c"))


def protocol(data, seed, *sizes):
    """The draws metrics/utils.py documents: one CPU generator from ``seed``; each set draws its factor rows,
    then a 62-bit seed for the generator its images are rendered with.  Returns [(codes, factors)], generator."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for n in sizes:
        factors = data.sample_factors(n, gen)
        render = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        sets.append((identity(data.render(factors, render)), factors))
    return sets, gen


class Counting:
    """A representation that counts the images it encodes."""

    def __init__(self, represent=identity):
        self.represent, self.images = represent, 0

    def __call__(self, x):
        self.images += x.shape[0]
        return self.represent(x)


def same(a, b):
    """Two results' as_dict() equal, arrays elementwise."""
    a, b = a.as_dict(), b.as_dict()
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


# ---------------------------------------------------------------- the sampling protocol, by hand
def test_sample_codes_follows_the_documented_draws():
    data = jitter_data()
    codes, factors = M.sample_codes(data, identity, 300, 7, chunk_size=64)
    ((expected_codes, expected_factors),), _ = protocol(data, 7, 300)
    assert torch.equal(factors, expected_factors) and torch.equal(codes, expected_codes)
    assert not torch.equal(codes, M.sample_codes(data, identity, 300, 8)[0])
    seeded = torch.Generator().manual_seed(7)  # a generator continues its stream, as the train/test split does
    assert torch.equal(M.sample_codes(data, identity, 300, seeded)[0], codes)
    assert torch.equal(M.sample_codes(data, identity, 300, None)[0], M.sample_codes(data, identity, 300, 0)[0])
    assert torch.equal(M.sample_codes(data, identity, 300)[0], M.sample_codes(data, identity, 300, 0)[0])


def test_compute_mig_is_mig_of_the_protocol_sample():
    data = jitter_data()
    result = M.compute_mig(data, identity, num_points=500, seed=4, num_bins=7)
    ((codes, factors),), _ = protocol(data, 4, 500)
    assert same(result, M.mig(codes, factors, num_bins=7, factor_names=("a", "b", "c")))
    assert result.factor_names == ("a", "b", "c")
    assert list(result.scalars()) == ["score", "a", "b", "c"]
    unnamed = jitter_data()
    del unnamed.factor_names  # ground truth need not name its factors: the gaps are then numbered
    result = M.compute_mig(unnamed, identity, num_points=500, seed=4, num_bins=7)
    assert list(result.scalars()) == ["score", "factor_0", "factor_1", "factor_2"] and result.factor_names is None


def duplicated(x):
    """Codes [y, y] with jitter: two equally good trees for each factor, so the model's seed picks the split."""
    y = identity(x)
    return torch.cat([y, y], dim=1)


@pytest.mark.parametrize(
    "metric, from_codes, kwargs",
    [
        (M.dci, M.dci_from_codes, {"gbt_kwargs": {"n_estimators": 3}}),
        (M.sap, M.sap_from_codes, {}),
        (M.sap, M.sap_from_codes, {"continuous_factors": True}),
        (M.modularity_explicitness, M.modularity_explicitness_from_codes, {"num_bins": 5}),
    ],
    ids=["dci", "sap", "sap-continuous", "modularity"],
)
def test_classifier_metrics_score_the_protocol_train_and_test_sets(metric, from_codes, kwargs):
    data = jitter_data()
    result = metric(data, duplicated, seed=3, num_train=200, num_test=100, **kwargs)
    ((train, train_f), (test, test_f)), gen = protocol(data, 3, 200, 100)
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))  # the model's seed comes last
    train, test = torch.cat([train, train], 1), torch.cat([test, test], 1)
    seeded = {"random_state": random_state} if metric is M.dci else {}  # SVM and lbfgs draw no random numbers
    assert same(result, from_codes(train, train_f, test, test_f, **seeded, **kwargs))


def test_dci_model_seed_matters_when_codes_tie():
    # The check above can only catch a wrong or missing model seed if the seed changes the result.
    ((train, train_f), (test, test_f)), _ = protocol(jitter_data(), 3, 200, 100)
    train, test = torch.cat([train, train], 1), torch.cat([test, test], 1)
    runs = [
        M.dci_from_codes(train, train_f, test, test_f, random_state=s, gbt_kwargs={"n_estimators": 3}) for s in (0, 1)
    ]
    assert not np.array_equal(runs[0].importance_matrix, runs[1].importance_matrix)
    default = M.dci_from_codes(train, train_f, test, test_f, gbt_kwargs={"n_estimators": 3})
    assert np.array_equal(default.importance_matrix, runs[0].importance_matrix)  # random_state defaults to 0


# ---------------------------------------------------------------- defaults: disentanglement_lib's sizes
def test_mig_defaults():
    data, counting = jitter_data(), Counting()
    result = M.compute_mig(data, counting)
    assert counting.images == 10_000
    assert same(result, M.compute_mig(data, identity, num_points=10_000, seed=0, num_bins=20))
    codes = torch.rand(50, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(M.discretize(codes), M.discretize(codes, 20))


def test_factor_vae_defaults():
    # A half-scale dimension (std about 0.5 / sqrt(12)): active at the 0.05 threshold, pruned at higher ones.
    def represent(x):
        y = identity(x)
        return torch.cat([y, 0.5 * (y[:, :1] - y[:, :1].floor())], dim=1)

    data, counting = jitter_data(), Counting(represent)
    result = M.factor_vae_score(data, counting)
    assert counting.images == 10_000 + (10_000 + 5_000) * 64
    explicit = M.factor_vae_score(
        data,
        represent,
        seed=0,
        batch_size=64,
        num_train=10_000,
        num_eval=5_000,
        num_variance_estimate=10_000,
        prune_threshold=0.05,
    )
    assert same(result, explicit) and result.num_active_dims == 4


def test_beta_vae_defaults():
    data, counting = jitter_data(), Counting()
    result = M.beta_vae_score(data, counting)
    assert counting.images == (10_000 + 5_000) * 2 * 64
    assert same(result, M.beta_vae_score(data, identity, seed=0, batch_size=64, num_train=10_000, num_eval=5_000))


@pytest.mark.parametrize(
    "metric, kwargs, defaults",
    [
        (M.dci, {"gbt_kwargs": {"n_estimators": 1, "max_depth": 1}}, {}),
        (M.sap, {}, {"continuous_factors": False}),
        (M.modularity_explicitness, {}, {"num_bins": 20}),
    ],
    ids=["dci", "sap", "modularity"],
)
def test_classifier_metric_defaults(metric, kwargs, defaults):
    data, counting = jitter_data(), Counting(duplicated)
    result = metric(data, counting, **kwargs)
    assert counting.images == 10_000 + 5_000
    explicit = metric(data, duplicated, seed=0, num_train=10_000, num_test=5_000, **kwargs, **defaults)
    assert same(result, explicit)


def test_classifier_metric_default_options():
    ((train, train_f), (test, test_f)), _ = protocol(jitter_data(), 5, 300, 300)
    train, test = torch.cat([train, train], 1), torch.cat([test, test], 1)
    assert same(
        M.sap_from_codes(train, train_f, test, test_f),
        M.sap_from_codes(train, train_f, test, test_f, continuous_factors=False),
    )
    assert same(
        M.modularity_explicitness_from_codes(train, train_f, test, test_f),
        M.modularity_explicitness_from_codes(train, train_f, test, test_f, num_bins=20),
    )
    assert M.sap(jitter_data(), identity, num_train=300, num_test=300, continuous_factors=True).score_matrix.shape == (
        3,
        3,
    )


# ---------------------------------------------------------------- MIG's pieces against numpy and sklearn
def test_discretize_is_numpy_histogram_and_digitize_in_float64():
    rng = np.random.default_rng(3)
    codes = np.concatenate([rng.normal(size=(40, 2)), np.full((40, 1), 2.5)], axis=1).astype(np.float32)
    as64 = codes.astype(np.float64)
    expected = np.stack([np.digitize(c, np.histogram(c, 7)[1][:-1]) for c in as64.T], axis=1)
    assert (M.discretize(codes, 7).numpy() == expected).all()
    assert (expected[:, 2] == 4).all()  # a constant spans value +- 0.5: it sits on the middle edge and goes up
    one_row = M.discretize(np.array([[0.3, -1.0]]), 4)
    assert one_row.tolist() == [[3, 3]]
    for bad in (np.zeros((0, 3)), np.zeros(5)):
        with pytest.raises(ValueError, match="non-empty"):
            M.discretize(bad)


def test_discretize_edges_are_float64_for_float32_codes():
    # Edges computed in float32 put some of these values in the neighbouring bin.
    codes = torch.tensor([[0.0], [0.3], [0.6], [0.9], [0.7], [1.0]], dtype=torch.float32)
    as64 = codes.double().numpy()[:, 0]
    expected = np.digitize(as64, np.histogram(as64, 10)[1][:-1])
    assert M.discretize(codes, 10)[:, 0].tolist() == expected.tolist()
    # Only the bin width in float32 (float32 0.9 / 10): the float32 roundings of k * width straddle their edges.
    codes = np.float32([0.0, 0.9] + [np.float64(np.float32(0.9)) / 10 * k for k in range(1, 10)])[:, None]
    as64 = codes.astype(np.float64)[:, 0]
    expected = np.digitize(as64, np.histogram(as64, 10)[1][:-1])
    assert M.discretize(codes, 10)[:, 0].tolist() == expected.tolist()


def test_mutual_information_and_entropy_match_sklearn_with_single_counts():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, (25, 2)), rng.integers(0, 4, (25, 3))  # 25 points over 20 cells: many counts of 1
    expected = [[mutual_info_score(a[:, i], b[:, j]) for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(M.mutual_information(a, b).numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(M.mutual_information(a[:, 0], b[:, 0]).numpy(), [[expected[0][0]]], rtol=1e-12)
    labels = a[:, 0].astype(np.float64)  # integer-valued floats are labels too
    np.testing.assert_allclose(M.entropy(labels).numpy(), [mutual_info_score(a[:, 0], a[:, 0])], rtol=1e-12)
    with pytest.raises(ValueError, match="integer class indices"):
        M.entropy(labels + 0.5)
    with pytest.raises(ValueError, match="same number of points"):
        M.mutual_information(a, b[:-1])


def test_mig_equals_the_formula_on_two_codes_and_binary_factors():
    rng = np.random.default_rng(1)
    factors = rng.integers(0, 2, (400, 2))
    codes = factors + rng.normal(scale=[[0.3, 0.8]], size=(400, 2))
    result = M.mig(codes, factors, num_bins=6)
    score, gaps = mig_by_hand(codes, factors, 6)
    assert result.score == pytest.approx(score, rel=1e-12)
    np.testing.assert_allclose(result.per_factor.numpy(), gaps, rtol=1e-12)
    np.testing.assert_allclose(result.factor_entropy.numpy(), [mutual_info_score(f, f) for f in factors.T], rtol=1e-12)
    assert result.factor_names is None and list(result.scalars()) == ["score", "factor_0", "factor_1"]
    with pytest.raises(ValueError, match=r"\['#1'\]"):  # unnamed factors are numbered in the message
        M.mig(codes, np.stack([factors[:, 0], np.zeros(400, dtype=int)], 1))


# ---------------------------------------------------------------- FactorVAE score: votes and branches
def test_factor_vae_votes_fix_one_factor_to_the_first_rows_value():
    gen = torch.Generator().manual_seed(0)
    k, rows = sample_vote_factors(FactorData(SIZES), 200, 5, gen)
    assert set(k.tolist()) == {0, 1, 2}
    for vote, factor in zip(rows, k):
        assert (vote[:, factor] == vote[0, factor]).all()  # the fixed factor
    varied = sum(int((vote[:, j] != vote[0, j]).any()) for vote, f in zip(rows, k) for j in range(3) if j != f)
    assert varied > 0.9 * 2 * 200  # the other factors keep their own draws


def test_factor_vae_normalises_local_by_global_variance():
    # The fixed factor's dimension keeps a little noise, and the dimensions' scales differ by 10^3:
    # without dividing by the global variance the vote would go to the smallest scale, not the fixed factor.
    noise = torch.Generator().manual_seed(9)

    def represent(x):
        y = identity(x)
        return (y + 0.05 * torch.randn(y.shape, generator=noise, dtype=torch.float64)) * torch.tensor([100.0, 1.0, 0.1])

    result = M.factor_vae_score(
        FactorData(SIZES), represent, seed=2, batch_size=16, num_train=150, num_eval=150, num_variance_estimate=500
    )
    assert result.score == result.train_accuracy == result.eval_accuracy == 1.0
    assert result.train_votes.sum() == 150 and result.eval_votes.sum() == 150
    assert (result.eval_votes == torch.diag(result.eval_votes.diagonal())).all()  # every vote on its own factor


def test_factor_vae_prune_threshold_is_inclusive_with_ddof_1():
    data = jitter_data()

    def represent(x):
        y = identity(x)
        return torch.cat([y, 0.001 * y[:, :1]], dim=1)

    gen = torch.Generator().manual_seed(0)  # the global variance is estimated first, from the seed's stream
    factors = data.sample_factors(300, gen)
    render = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    std = float(represent(data.render(factors, render))[:, 3].var(correction=1).sqrt())  # to the last bit
    kwargs = dict(seed=0, batch_size=8, num_train=30, num_eval=30, num_variance_estimate=300)
    assert M.factor_vae_score(data, represent, prune_threshold=std, **kwargs).active_dims == [0, 1, 2, 3]
    above = np.nextafter(std, 1.0)
    assert M.factor_vae_score(data, represent, prune_threshold=above, **kwargs).active_dims == [0, 1, 2]


def test_factor_vae_renders_with_the_jitter_of_its_generator():
    # Codes that are only the jitter: without the render generator they would be the constant bin centre.
    jitter = lambda x: identity(x) - identity(x).floor()
    result = M.factor_vae_score(
        jitter_data(), jitter, batch_size=8, num_train=90, num_eval=30, num_variance_estimate=200
    )
    assert result.num_active_dims == 3
    assert (result.train_votes.sum(0) > 0).all()  # pure noise: the votes fall on every dimension


def test_factor_vae_single_vote_and_collapsed_codes():
    one = M.factor_vae_score(
        FactorData(SIZES), identity, batch_size=2, num_train=1, num_eval=1, num_variance_estimate=50
    )
    assert one.train_accuracy == 1.0 and one.train_votes.sum() == 1  # one vote: the classifier gets it right
    assert one.eval_accuracy in (0.0, 1.0) and one.eval_votes.sum() == 1
    with pytest.warns(UserWarning, match="no code dimension") as warned:
        none = M.factor_vae_score(
            FactorData(SIZES), lambda x: torch.zeros(x.shape[0], 4), num_train=5, num_eval=5, num_variance_estimate=20
        )
    assert not warned[0].filename.endswith("factor_vae.py")  # it points at the caller, not at the metric's own line
    assert none.as_dict() == {
        "score": 0.0,
        "train_accuracy": 0.0,
        "eval_accuracy": 0.0,
        "num_active_dims": 0,
        "active_dims": [],
        "train_votes": [[], [], []],
        "eval_votes": [[], [], []],
        "chance": 1 / 3,
        "per_factor_accuracy": [0.0, 0.0, 0.0],
    }
    assert none.train_votes.dtype == torch.long
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        M.factor_vae_score(FactorData(SIZES), identity, batch_size=1)


# ---------------------------------------------------------------- BetaVAE score
def scrambled(x):
    """A fixed but imperfect representation: each factor row's code is the row plus a pseudo-random offset."""
    y = identity(x)
    return y + 1.5 * torch.sin(7.3 * y.sum(1, keepdim=True) + torch.arange(y.shape[1]))


def test_beta_vae_on_two_factors_fields_and_seed():
    data = FactorData((4, 5), factor_names=("a", "b"))
    kwargs = dict(batch_size=8, num_train=60, num_eval=40)
    perfect = M.beta_vae_score(data, identity, seed=1, **kwargs)
    assert perfect.score == perfect.eval_accuracy == perfect.train_accuracy == 1.0
    first, again, other = (M.beta_vae_score(data, scrambled, seed=s, **kwargs) for s in (1, 1, 2))
    assert first.score < 1.0 and same(first, again) and not same(first, other)
    default = M.beta_vae_score(data, scrambled, **kwargs)
    assert same(default, M.beta_vae_score(data, scrambled, seed=0, **kwargs)) and not same(default, first)
    assert first.score == first.eval_accuracy and first.train_accuracy != first.eval_accuracy
    with pytest.raises(ValueError, match="single factor"):
        M.beta_vae_score(data, identity, num_train=1, num_eval=1, batch_size=2)


def test_beta_vae_features_are_mean_absolute_differences_of_pairs_sharing_a_factor():
    from sbvae.metrics.beta_vae import _features

    # Codes = factors: within a pair the shared factor's difference is 0, so its feature is exactly 0 ...
    feats, k = _features(
        FactorData((7, 7, 7)), identity, 50, 10, torch.Generator().manual_seed(0), 64, torch.device("cpu")
    )
    assert feats.shape == (50, 3) and feats.dtype == torch.float64 and len(set(k.tolist())) == 3
    assert (feats[torch.arange(50), k] == 0).all()
    others = feats.clone()
    others[torch.arange(50), k] = 1.0
    assert (others > 0).all()  # the unshared factors differ within some pair of every batch
    # ... unless the images carry their own jitter, drawn from the render generator: then it is not.
    feats, k = _features(
        JitterData((7, 7, 7)), identity, 50, 10, torch.Generator().manual_seed(0), 64, torch.device("cpu")
    )
    assert (feats[torch.arange(50), k] > 0.1).all()


# ---------------------------------------------------------------- DCI, SAP, modularity / explicitness
def two_factor_code(x):
    """Code 0 = 6 a + b carries factors a and b, code 1 = c: importance [[1, 1, 0], [0, 0, 1]]."""
    y = identity(x)
    return torch.stack([6 * y[:, 0] + y[:, 1], y[:, 2]], dim=1)


def test_dci_tells_disentanglement_from_completeness():
    # D: code 0 spreads over two of three factors (1 - ln 2 / ln 3, weight 2/3), code 1 is pure (weight 1/3);
    # C: every factor lives in one code.  A redundant [y, y] code would make the two equal.
    data = FactorData(SIZES)
    result = M.dci(data, two_factor_code, seed=0, num_train=400, num_test=200, gbt_kwargs={"n_estimators": 5})
    d = 1 - (2 / 3) * math.log(2) / math.log(3)
    assert result.score == result.disentanglement == pytest.approx(d, abs=1e-8)
    assert result.completeness == pytest.approx(1.0, abs=1e-8)
    assert result.informativeness_train == result.informativeness_test == 1.0
    np.testing.assert_allclose(result.importance_matrix, [[1, 1, 0], [0, 0, 1]], atol=1e-12)


def test_dci_informativeness_is_the_accuracy_of_the_given_trees():
    # One stump per class cannot tell 10 classes apart: the options reach the trees.
    data = FactorData(SIZES)
    weak = M.dci(data, identity, num_train=300, num_test=100, gbt_kwargs={"n_estimators": 1, "max_depth": 1})
    strong = M.dci(data, identity, num_train=300, num_test=100, gbt_kwargs={"n_estimators": 10})
    assert weak.informativeness_train < 0.9 and strong.informativeness_train == 1.0


def test_dci_scores_are_computed_in_float64():
    r = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.3]], dtype=np.float32)
    assert M.disentanglement(r) == M.disentanglement(r.astype(np.float64))
    assert M.completeness(r) == M.completeness(r.astype(np.float64))
    assert M.modularity(r) == M.modularity(r.astype(np.float64))


def test_dci_scores_of_an_all_zero_importance_matrix_are_zero():
    # No code predicts anything: every factor is spread evenly over the codes, and every code over the factors.
    assert M.disentanglement(np.zeros((3, 2))) == 0.0
    assert M.completeness(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-15)


def test_sap_pieces_on_hand_made_cases():
    assert top_two_gap(np.array([[0.9, 0.1], [0.5, 0.2], [0.3, 0.6]])) == pytest.approx(((0.9 - 0.5) + (0.6 - 0.2)) / 2)
    # Two balanced binary factors, code d = factor d: each code predicts its own factor exactly and the
    # other at chance; any 1-d rule on the other code is right on exactly half of the full grid.
    grid = np.array(list(itertools.product([0, 1], [0, 1])) * 25)
    matrix = discrete_score_matrix(grid.astype(float), grid, grid.astype(float), grid)
    np.testing.assert_array_equal(matrix, [[1.0, 0.5], [0.5, 1.0]])
    assert M.sap_from_codes(grid.astype(float), grid, grid.astype(float), grid).score == 0.5


def test_sap_discrete_is_a_balanced_svm_with_c_001():
    # Imbalanced classes (1 in 5 is class 1) and a code that overlaps them: class weights and C move the boundary.
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    y = (rng.random((400, 1)) < 0.2).astype(int)
    x = y + rng.normal(scale=0.3, size=(400, 1))
    expected = np.mean(
        LinearSVC(C=0.01, class_weight="balanced", random_state=0).fit(x[:200], y[:200, 0]).predict(x[200:])
        == y[200:, 0]
    )
    assert discrete_score_matrix(x[:200], y[:200], x[200:], y[200:])[0, 0] == expected
    unbalanced = np.mean(LinearSVC(C=0.01, random_state=0).fit(x[:200], y[:200, 0]).predict(x[200:]) == y[200:, 0])
    loose = np.mean(
        LinearSVC(C=1.0, class_weight="balanced", random_state=0).fit(x[:200], y[:200, 0]).predict(x[200:])
        == y[200:, 0]
    )
    assert expected != unbalanced and expected != loose  # so the check above tells them apart


def test_sap_continuous_is_the_squared_correlation_in_float64():
    rng = np.random.default_rng(2)
    factors = rng.integers(0, 5, (300, 2)).astype(float)
    codes = np.concatenate([factors + rng.normal(size=(300, 2)), np.full((300, 1), 3.0)], axis=1).astype(np.float32)
    with np.errstate(invalid="ignore"):
        r = np.corrcoef(codes.astype(np.float64).T, factors.T)[:3, 3:] ** 2
    r[2] = 0.0  # a constant code explains nothing
    np.testing.assert_allclose(continuous_score_matrix(codes, factors), r, rtol=1e-12, atol=1e-15)


def test_sap_continuous_zeroes_codes_of_variance_at_most_1e_12():
    # disentanglement_lib's guard: a code dimension scores only when its variance (ddof 1) exceeds 1e-12.
    # Codes [0, 0, d] have variance d^2 / 3; both are proportional to the factor, so R^2 is 1 when scored.
    factor = np.array([[0.0], [0.0], [1.0]])
    codes = np.sqrt(3 * np.array([[1.5e-12, 0.8e-12]])) * factor  # variances 1.5e-12 and 0.8e-12
    np.testing.assert_allclose(continuous_score_matrix(codes, factor), [[1.0], [0.0]], rtol=1e-12)
    # one code dimension alone: the variance divides by the number of images less one, not of dimensions
    np.testing.assert_allclose(continuous_score_matrix(codes[:, :1], factor), [[1.0]], rtol=1e-12)


def test_explicitness_is_the_macro_auc_of_a_logistic_regression_on_standardised_codes():
    rng = np.random.default_rng(4)
    factors = rng.integers(0, 3, (300, 2))
    # Codes of std about 0.3 and 5 (one below 1, one above) and a constant one: standardising changes them all.
    codes = np.concatenate(
        [factors * [[0.2, 5.0]] + rng.normal(scale=0.25, size=(300, 2)), np.full((300, 1), 7.0)], axis=1
    )
    train, test = slice(0, 200), slice(200, 300)
    test_factors = factors[test].copy()
    test_factors[test_factors[:, 1] == 2, 1] = 1  # class 2 of factor 1 absent from the test split: left out
    scaler = StandardScaler().fit(codes[train])
    expected_train, expected_test = [], []
    for k in range(2):
        clf = LogisticRegression().fit(scaler.transform(codes[train]), factors[train, k])
        for split, y, out in ((train, factors[train, k], expected_train), (test, test_factors[:, k], expected_test)):
            proba = clf.predict_proba(scaler.transform(codes[split]))
            present = [c for c in clf.classes_ if (y == c).any()]
            out.append(roc_auc_score(y[:, None] == np.array(present)[None, :], proba[:, present], average="macro"))
    got = M.explicitness(codes[train], factors[train], codes[test], test_factors)
    assert got == pytest.approx((np.mean(expected_train), np.mean(expected_test)), rel=1e-9)
    with pytest.raises(ValueError, match=r"takes only \[1\]; use more points"):  # no AUC in a one-class split
        M.explicitness(codes[train], factors[train], codes[test], np.ones_like(test_factors))


def test_modularity_result_fields_and_no_warning_for_empty_codes():
    ((train, train_f), (test, test_f)), _ = protocol(jitter_data(), 1, 300, 200)
    codes = lambda c: torch.cat([c, torch.zeros(len(c), 1)], dim=1)  # a code with no information
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 for the empty code is handled, not warned about
        result = M.modularity_explicitness_from_codes(codes(train), train_f, codes(test), test_f, num_bins=8)
    mi = M.mutual_information(M.discretize(codes(train), 8), train_f).numpy()
    np.testing.assert_array_equal(result.mutual_info, mi)
    assert result.score == result.modularity == M.modularity(mi)
    exp_train, exp_test = M.explicitness(codes(train), train_f, codes(test), test_f)
    assert (result.explicitness_train, result.explicitness_test) == (exp_train, exp_test)


# ---------------------------------------------------------------- latents used, ELBO, results
def test_count_used_is_below_one_half_by_default():
    from sbvae.metrics.latents_used import count_used

    assert count_used(torch.tensor([0.49, 0.5, 1.2, 0.01])) == 2


def test_latents_used_threshold_is_strict_and_computed_in_float64():
    std = torch.tensor([[0.5, 0.4999, 0.7]], dtype=torch.float32).expand(4, -1)
    result = M.latents_used(std=std)
    assert result.score == 1 and result.used.tolist() == [False, True, False]
    assert result.mean_std.dtype == torch.float64 and torch.equal(result.mean_std, std[0].double())
    assert M.latents_used(std=std, threshold=0.8).score == 3
    logvar = torch.full((3, 2), -1.0, dtype=torch.float32)
    assert torch.equal(M.latents_used(logvar).mean_std, torch.full((2,), math.exp(-0.5), dtype=torch.float64))


def test_evaluate_elbo_uses_the_render_generator_and_the_seed():
    data = jitter_data()
    encode = lambda x: (identity(x)[:, :2], torch.zeros(len(x), 2))
    # The NLL sees only the jitter: 1/12 per factor in expectation when rendered with a generator, 0 at bin centres.
    jitter_nll = lambda z, x: (identity(x) - identity(x).floor() - 0.5).pow(2).sum(1)
    result = M.evaluate_elbo(data, encode, jitter_nll, num_images=3000, chunk_size=512)
    assert result.nll == pytest.approx(3 / 12, rel=0.05)
    a = M.evaluate_elbo(data, encode, lambda z, x: (z - identity(x)[:, :2]).pow(2).sum(1), num_images=300)
    b = M.evaluate_elbo(data, encode, lambda z, x: (z - identity(x)[:, :2]).pow(2).sum(1), num_images=300)
    c = M.evaluate_elbo(data, encode, lambda z, x: (z - identity(x)[:, :2]).pow(2).sum(1), num_images=300, seed=1)
    assert a.as_dict() == b.as_dict() and a.nll != c.nll
    assert a.kl == pytest.approx(
        0.5
        * float(
            (identity(data.render(data.sample_factors(300, torch.Generator().manual_seed(0))))[:, :2] ** 2)
            .sum(1)
            .mean()
        ),
        rel=0.2,
    )


def test_evaluate_elbo_on_batches_reads_images_and_stops_at_num_images():
    batches = [(torch.full((4, 1, 1, 1), float(i)), torch.full((4,), -99.0)) for i in range(10)]

    def stream():
        for i, batch in enumerate(batches):
            assert i < 3, "asked for a batch past num_images"
            yield batch

    encode = lambda x: (x.flatten(1), torch.zeros(len(x), 1))
    result = M.evaluate_elbo(stream(), encode, lambda z, x: x.flatten(1).sum(1), num_images=12, sample=False)
    assert result.num_images == 12 and result.nll == pytest.approx((0 + 1 + 2) / 3)
    assert result.kl == pytest.approx(0.5 * (0 + 1 + 4) / 3)
    assert result.scalars() == {"score": result.elbo, "nll": result.nll, "kl": result.kl, "latents_used": 0.0}


def test_results_as_dict_and_scalars():
    result = M.MIGResult(
        score=0.5, per_factor=torch.tensor([0.25, 0.75]), mutual_info=torch.eye(2), factor_entropy=torch.ones(2)
    )
    assert result.as_dict() == {
        "score": 0.5,
        "per_factor": [0.25, 0.75],
        "mutual_info": [[1.0, 0.0], [0.0, 1.0]],
        "factor_entropy": [1.0, 1.0],
        "factor_names": None,
    }
    assert result.scalars() == {"score": 0.5, "factor_0": 0.25, "factor_1": 0.75}
    sap = M.SAPResult(score=np.float64(0.25), score_matrix=np.zeros((1, 1)))
    assert sap.scalars() == {"score": 0.25} and sap.as_dict() == {"score": 0.25, "score_matrix": [[0.0]]}
    fv = M.FactorVAEResult(
        1.0,
        0.5,
        1.0,
        2,
        [0, 3],
        torch.zeros(1, 2, dtype=torch.long),
        torch.ones(1, 2, dtype=torch.long),
        0.5,
        [1.0, 1.0],
    )
    assert fv.scalars() == {
        "score": 1.0,
        "train_accuracy": 0.5,
        "eval_accuracy": 1.0,
        "num_active_dims": 2.0,
        "chance": 0.5,
    }
    assert fv.as_dict()["per_factor_accuracy"] == [1.0, 1.0]
    assert fv.as_dict()["eval_votes"] == [[1, 1]] and fv.as_dict()["active_dims"] == [0, 3]
    nested = M.DCIResult(0.0, 0.0, 0.0, 0.0, 0.0, {"a": (np.int64(1), torch.tensor(2.0))})
    assert nested.as_dict()["importance_matrix"] == {"a": [1, 2.0]}


def test_factor_checks_name_the_factor_and_allow_two_classes():
    class Plain:  # no has_ground_truth, no factor_names: a minimal ground-truth object
        factor_sizes = (2, 3)

        def sample_factors(self, n, generator):
            return FactorData((2, 3)).sample_factors(n, generator)

        def render(self, factors, generator=None):
            return factors.double()[:, :, None, None]

    assert M.sap(Plain(), identity, num_train=40, num_test=40).score_matrix.shape == (2, 2)
    Plain.factor_sizes = (2, 1)
    with pytest.raises(ValueError, match=r"\['1'\]"):
        M.sap(Plain(), identity, num_train=40, num_test=40)


@pytest.mark.parametrize(
    "metric, kwargs",
    [
        (M.compute_mig, {"num_points": 200}),
        (M.factor_vae_score, {"batch_size": 4, "num_train": 20, "num_eval": 20, "num_variance_estimate": 50}),
        (M.beta_vae_score, {"batch_size": 4, "num_train": 30, "num_eval": 20}),
        (M.dci, {"num_train": 60, "num_test": 30, "gbt_kwargs": {"n_estimators": 2}}),
        (M.sap, {"num_train": 60, "num_test": 30}),
        (M.modularity_explicitness, {"num_train": 60, "num_test": 30}),
    ],
    ids=["mig", "factor_vae", "beta_vae", "dci", "sap", "modularity"],
)
def test_metrics_draw_only_from_their_own_generator(metric, kwargs):
    # torch's global stream is the training run's: scoring in the middle of a run must not move it.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    metric(jitter_data(), scrambled, seed=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    M.evaluate_elbo(
        jitter_data(), lambda x: (identity(x), torch.zeros(len(x), 3)), lambda z, x: z.pow(2).sum(1), num_images=50
    )
    assert torch.equal(torch.get_rng_state(), before)


def test_codes_that_carry_gradients_are_scored_as_plain_numbers():
    rng = np.random.default_rng(5)
    factors = rng.integers(0, 4, (200, 2))
    codes = torch.tensor(factors + rng.normal(size=(200, 2)), requires_grad=True)  # a model's output, say
    assert same(M.mig(codes, factors, num_bins=5), M.mig(codes.detach().numpy(), factors, num_bins=5))
    train, test = slice(0, 100), slice(100, 200)
    plain = codes.detach().numpy()
    assert same(
        M.sap_from_codes(codes[train], factors[train], codes[test], factors[test]),
        M.sap_from_codes(plain[train], factors[train], plain[test], factors[test]),
    )
    assert M.latents_used(std=codes.abs()).score == M.latents_used(std=codes.detach().abs()).score


def test_constant_factor_errors_name_the_factor():
    with pytest.raises(ValueError, match=r"\['f0'\] of FactorData take a single value"):
        M.factor_vae_score(FactorData((1, 6, 40)), identity)


@pytest.mark.parametrize("metric", [M.dci, M.sap, M.modularity_explicitness], ids=["dci", "sap", "modularity"])
def test_classifier_metrics_refuse_data_without_ground_truth(metric):
    with pytest.raises(ValueError, match="has no ground-truth factors"):
        metric(FactorData(SIZES, has_ground_truth=False), identity, num_train=20, num_test=10)


def test_encode_groups_encodes_whole_groups_of_at_most_chunk_size_images():
    # Pairs (groups of 4 images) encoded 64 images at a time; a group larger than the chunk goes alone.
    seen = []

    def represent(x):
        seen.append(x.shape[0])
        return identity(x)

    rows = FactorData(SIZES).sample_factors(40 * 4, torch.Generator().manual_seed(0)).view(40, 4, -1)
    codes = encode_groups(FactorData(SIZES), represent, rows, lambda c: c, chunk_size=64)
    assert seen == [64, 64, 32] and torch.equal(codes, rows.double())
    seen.clear()
    encode_groups(FactorData(SIZES), represent, rows[:3], lambda c: c, chunk_size=3)
    assert seen == [4, 4, 4]


def test_metrics_run_where_the_model_lives():
    # The meta device stands in for a GPU: a module's, or a bound method's module's, device unless one is given.
    model, statistics = torch.nn.Linear(2, 2).to("meta"), torch.nn.BatchNorm1d(2, affine=False).to("meta")
    meta, cpu = torch.device("meta"), torch.device("cpu")
    assert (
        resolve_device(model, None) == resolve_device(model.forward, None) == resolve_device(statistics, None) == meta
    )
    assert (
        resolve_device(model, "cpu")
        == resolve_device(lambda x: x, None)
        == resolve_device(torch.nn.ReLU(), None)
        == cpu
    )
