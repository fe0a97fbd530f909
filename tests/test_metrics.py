"""MIG and FactorVAE score: disentanglement_lib's oracle cases and ground-truth properties (METRICS.md)."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from metric_fakes import DSPRITES_NAMES, DSPRITES_SIZES, FactorData, identity, mig_by_hand, noise
from sbvae.errors import SBVAEError
from sbvae.metrics import (
    compute_mig,
    discretize,
    entropy,
    factor_vae_score,
    mig,
    mutual_information,
    sample_codes,
)


@pytest.fixture(scope="module")
def factors():
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(0, s, (10_000,), generator=gen) for s in DSPRITES_SIZES], dim=1)


# ---------------------------------------------------------------- oracle values (DL's tests)
def test_discretize_oracle():
    x = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])  # DL layout: rows are dims
    labels = discretize(x.T, num_bins=3).T
    assert labels.tolist() == [[1, 1, 2, 2, 3, 3], [3, 3, 2, 2, 1, 1]]
    np.testing.assert_allclose(entropy(labels.T).numpy(), [math.log(3)] * 2, rtol=1e-12)


def test_mutual_information_oracle():
    xs = np.array([[1, 2, 1, 2], [1, 1, 2, 2]])
    ys = np.array([[1, 2, 1, 2], [2, 2, 1, 1]])
    mi = mutual_information(xs.T, ys.T).numpy()
    np.testing.assert_allclose(mi, [[math.log(2), 0.0], [0.0, math.log(2)]], atol=1e-12)


def test_discretize_matches_numpy():
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(size=(1000, 3)), rng.integers(0, 7, (1000, 2)).astype(float)], axis=1)
    expected = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.T], axis=1)
    assert (discretize(codes, 20).numpy() == expected).all()
    assert (discretize(torch.as_tensor(codes), 20).numpy() == expected).all()
    assert discretize(np.full((5, 1), 3.0)).unique().numel() == 1  # constant dim: one bin, no nan


def test_mutual_information_matches_sklearn():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 7, (700, 4))
    b = np.stack([rng.integers(3, 9, 700), a[:, 0] // 2, rng.integers(0, 2, 700)], axis=1)
    ours = mutual_information(a, b).numpy()
    ref = [[mutual_info_score(a[:, i], b[:, j]) for j in range(3)] for i in range(4)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(entropy(b).numpy(), [mutual_info_score(c, c) for c in b.T], atol=1e-12)


# ---------------------------------------------------------------- MIG on dSprites factor indices
def test_mig_ground_truth(factors):
    result = mig(factors.double(), factors)
    score, gaps = mig_by_hand(factors.numpy(), factors.numpy())  # numpy's histogram and sklearn's MI, not ours
    assert result.score == pytest.approx(score, rel=1e-12) and score == pytest.approx(0.8955, abs=0.01)  # METRICS.md
    np.testing.assert_allclose(result.per_factor.numpy(), gaps, rtol=1e-12)
    assert (
        result.mutual_info.shape == (5, 5) and result.per_factor.shape == (5,) and result.factor_entropy.shape == (5,)
    )
    np.testing.assert_allclose(
        result.factor_entropy.numpy(), [mutual_info_score(c, c) for c in factors.numpy().T], atol=1e-12
    )
    json.dumps(result.as_dict())
    assert mig(factors.numpy().astype(np.float32), factors.numpy()).score == pytest.approx(result.score, abs=1e-12)


@pytest.mark.parametrize(
    "transform",
    [
        lambda y: y[:, [3, 0, 4, 1, 2]],
        lambda y: -y,
        lambda y: 0.07 * y + 3.3,
        lambda y: -2.5 * y - 1.0,
    ],
    ids=["permutation", "sign", "scale-shift", "negative-scale-shift"],
)
def test_mig_invariances(factors, transform):
    base = mig(factors.double(), factors).score
    assert mig(transform(factors.double()), factors).score == pytest.approx(base, abs=1e-3)


def test_mig_duplicated_codes_exactly_zero(factors):
    y = factors.double()
    assert mig(torch.cat([y, y], dim=1), factors).score == 0.0


def test_mig_constant_codes_zero(factors):
    assert mig(torch.zeros(10_000, 10), factors).score == 0.0


def test_mig_noise(factors):
    codes = torch.randn(10_000, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert mig(codes, factors).score < 0.01


def test_mig_rotated_positions(factors):
    y = factors.double()
    c = math.cos(math.pi / 4)
    rotated = y.clone()
    rotated[:, 3], rotated[:, 4] = c * (y[:, 3] - y[:, 4]), c * (y[:, 3] + y[:, 4])
    gaps = mig(rotated, factors).per_factor
    assert gaps[3] < 0.02 and gaps[4] < 0.02
    assert gaps[:3].min() > 0.75


def test_mig_constant_factor_raises(factors):
    bad = factors.clone()
    bad[:, 1] = 0
    with pytest.raises(ValueError, match="scale.*single value"):
        mig(factors.double(), bad, factor_names=DSPRITES_NAMES)
    with pytest.raises(ValueError, match="at least 2"):
        mig(factors.double()[:, :1], factors)


def test_compute_mig_from_data():
    data = FactorData()
    result = compute_mig(data, identity, num_points=2000, seed=3, chunk_size=512)
    codes, f = sample_codes(data, identity, 2000, 3, chunk_size=300)
    assert torch.equal(codes, f.double())  # the shared sampler: same seed, same draws, any chunking
    assert result.score == mig(codes, f).score


# ---------------------------------------------------------------- FactorVAE score
SMALL = dict(num_train=400, num_eval=300, num_variance_estimate=2000)


def test_factor_vae_identity_and_transforms():
    data = FactorData()
    result = factor_vae_score(data, identity, seed=0, **SMALL)
    assert result.score == 1.0 and result.train_accuracy == 1.0 and result.num_active_dims == 5
    json.dumps(result.as_dict())
    for transform in (lambda y: y[:, [2, 4, 0, 3, 1]], lambda y: -3.0 * y + 7.0, lambda y: 0.1 * y):
        assert factor_vae_score(data, lambda x: transform(identity(x)), seed=1, **SMALL).score == 1.0


def test_factor_vae_constant_codes():
    with pytest.warns(UserWarning, match="no code dimension"):
        result = factor_vae_score(FactorData(), lambda x: torch.zeros(x.shape[0], 10), **SMALL)
    assert result.score == 0.0 and result.num_active_dims == 0


def test_factor_vae_prunes_collapsed_dims():
    def represent(x):
        z = identity(x)
        return torch.cat([z, torch.full_like(z[:, :3], 2.0), 0.001 * z[:, :1]], dim=1)

    result = factor_vae_score(FactorData(), represent, **SMALL)
    assert result.num_active_dims == 5 and result.active_dims == [0, 1, 2, 3, 4] and result.score == 1.0


def test_factor_vae_noise_is_chance():
    result = factor_vae_score(FactorData(), noise(), seed=0, num_train=500, num_eval=2000, num_variance_estimate=1000)
    assert result.num_active_dims == 10
    assert abs(result.score - 0.2) < 0.05


def test_factor_vae_reports_chance_and_each_factors_accuracy():
    """A code of factors 0 and 1 plus noise: those two factors are always told apart, the rest at about chance;
    the score is the vote-weighted mean of the per-factor accuracies."""
    gen = torch.Generator().manual_seed(3)
    represent = lambda x: torch.cat(
        [identity(x)[:, :2], torch.randn(x.shape[0], 3, generator=gen, dtype=torch.float64)], 1
    )
    result = factor_vae_score(FactorData(), represent, seed=0, num_train=500, num_eval=2000, num_variance_estimate=1000)
    assert result.chance == pytest.approx(1 / 5) and len(result.per_factor_accuracy) == 5
    assert result.per_factor_accuracy[:2] == [1.0, 1.0] and max(result.per_factor_accuracy[2:]) < 0.7
    votes = result.eval_votes.sum(1).tolist()
    assert result.score == pytest.approx(
        sum(n * a for n, a in zip(votes, result.per_factor_accuracy)) / sum(votes), abs=1e-12
    )


def test_factor_vae_per_factor_accuracy_of_a_single_vote():
    """One eval vote: its factor's accuracy is that one vote (1.0 for a perfect code), the unvoted factors 0."""
    result = factor_vae_score(FactorData(), identity, seed=0, num_train=400, num_eval=1, num_variance_estimate=2000)
    voted = int(result.eval_votes.sum(1).argmax())
    assert int(result.eval_votes.sum()) == 1 and result.score == 1.0
    assert result.per_factor_accuracy == [1.0 if k == voted else 0.0 for k in range(5)]


def test_factor_vae_seeded_and_chunk_invariant():
    mixing = torch.randn(5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def represent(x):
        return identity(x) @ mixing

    data = FactorData()
    a = factor_vae_score(data, represent, seed=7, **SMALL)
    b = factor_vae_score(data, represent, seed=7, chunk_size=200, **SMALL)
    assert a.as_dict() == b.as_dict()
    assert 0.2 < a.score < 1.0
    c = factor_vae_score(data, represent, seed=8, **SMALL)
    assert not torch.equal(a.train_votes, c.train_votes)


def test_factor_vae_refuses_bad_data():
    with pytest.raises(ValueError, match="single value"):
        factor_vae_score(FactorData((1, 6, 40)), identity, **SMALL)
    with pytest.raises(ValueError, match="has no ground-truth factors"):
        factor_vae_score(FactorData(has_ground_truth=False), identity, **SMALL)
    with pytest.raises(ValueError, match="has no ground-truth factors"):
        compute_mig(FactorData(has_ground_truth=False), identity)
    with pytest.raises(ValueError, match=r"codes \[n, D\]"):
        factor_vae_score(FactorData(), lambda x: (identity(x), identity(x)), **SMALL)
    with pytest.raises(SBVAEError, match="nan or inf"):  # the CLIs print SBVAEError as one sentence
        factor_vae_score(FactorData(), lambda x: identity(x) * float("nan"), **SMALL)
    with pytest.raises(ValueError, match="nan or inf"):
        mig(torch.full((10, 3), float("inf")), torch.zeros(10, 2, dtype=torch.long) + torch.arange(10)[:, None] % 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_scores_on_cuda():
    data = FactorData()
    mixing = torch.randn(5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def represent(x):
        return identity(x) @ mixing.to(x.device)

    cpu = factor_vae_score(data, represent, seed=3, device="cpu", **SMALL)
    gpu = factor_vae_score(data, represent, seed=3, device="cuda", **SMALL)
    assert cpu.as_dict() == gpu.as_dict()
    codes, f = sample_codes(data, identity, 10_000, 4, device="cuda")
    assert codes.is_cuda
    assert mig(codes, f).score == pytest.approx(compute_mig(data, identity, seed=4, device="cpu").score, abs=1e-12)
