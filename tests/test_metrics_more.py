"""BetaVAE, DCI, SAP, modularity/explicitness, latents used and ELBO: oracles and identity-vs-noise sanity."""

import json
import math
import os
import threading

import numpy as np
import pytest
import torch

from metric_fakes import FactorData, identity, noise
from sbvae.metrics import (
    beta_vae_score,
    completeness,
    dci,
    dci_from_codes,
    disentanglement,
    evaluate_elbo,
    latents_used,
    modularity,
    modularity_explicitness,
    sap,
    sap_from_codes,
)
from sbvae.metrics.utils import MetricError, per_factor


def small_data(**kwargs):
    return FactorData((3, 6, 10), factor_names=("a", "b", "c"), **kwargs)


EYE = np.diag(5.0 * np.ones(5))


# ---------------------------------------------------------------- oracle values (DL's tests)
@pytest.mark.parametrize(
    "importance, d, c",
    [
        (EYE, 1.0, 1.0),
        (np.zeros((10, 10)), 0.0, 0.0),
        (np.vstack([EYE, EYE]), 1.0, 1.0 - math.log(2) / math.log(10)),
        (np.hstack([EYE, EYE]), 1.0 - math.log(2) / math.log(10), 1.0),
    ],
    ids=["identity", "zeros", "redundant-codes", "one-code-two-factors"],
)
def test_dci_oracle(importance, d, c):
    assert disentanglement(importance) == pytest.approx(d, abs=1e-7)
    assert completeness(importance) == pytest.approx(c, abs=1e-7)


@pytest.mark.parametrize(
    "mi, expected",
    [(EYE, 1.0), (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2.0 / 3.0), (np.hstack([EYE, EYE]), 1.0 - 1.0 / 9.0)],
    ids=["identity", "empty-code", "one-code-two-factors"],
)
def test_modularity_oracle(mi, expected):
    assert modularity(mi) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- identity vs noise, small sizes
def test_beta_vae_identity_vs_noise():
    data = small_data()
    good = beta_vae_score(data, identity, num_train=300, num_eval=200, batch_size=16)
    assert good.score == 1.0
    bad = beta_vae_score(data, noise(6), num_train=300, num_eval=300, batch_size=16)
    assert abs(bad.score - 1 / 3) < 0.12
    json.dumps(good.as_dict())


def test_dci_identity_vs_noise():
    data = small_data()
    kwargs = dict(num_train=500, num_test=200, gbt_kwargs={"n_estimators": 10})
    good = dci(data, identity, **kwargs)
    # One code per factor: the importance matrix is diagonal, so D = C = 1 (up to DL's 1e-11 smoothing).
    assert good.disentanglement == pytest.approx(1.0, abs=1e-8) and good.completeness == pytest.approx(1.0, abs=1e-8)
    assert good.informativeness_test == good.informativeness_train == 1.0
    bad = dci(data, noise(6), **kwargs)
    assert bad.disentanglement < 0.25 and bad.completeness < 0.25
    json.dumps(good.as_dict())


def test_dci_parallel_fits_equal_serial_ones(monkeypatch):
    """The factors' classifiers fitted in joblib threads give the same importance matrix and accuracies."""
    from sklearn.ensemble import GradientBoostingClassifier

    threads, plain_fit = [], GradientBoostingClassifier.fit

    def recording_fit(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return plain_fit(self, *args, **kwargs)

    monkeypatch.setattr(GradientBoostingClassifier, "fit", recording_fit)
    data = small_data()
    kwargs = dict(num_train=300, num_test=100, gbt_kwargs={"n_estimators": 10, "subsample": 0.5})
    serial = dci(data, noise(6), seed=3, **kwargs)
    assert set(threads) == {threading.get_ident()}
    threads.clear()
    parallel = dci(data, noise(6), seed=3, n_jobs=2, **kwargs)
    assert len(threads) == 3 and threading.get_ident() not in threads  # n_jobs reached the fits
    threads.clear()
    # Called without n_jobs, the codes' DCI starts no threads either: a sweep's own workers stay one thread each.
    train, test = (data.sample_factors(n, torch.Generator().manual_seed(n)) for n in (300, 100))
    dci_from_codes(train.double(), train, test.double(), test, gbt_kwargs={"n_estimators": 2})
    assert set(threads) == {threading.get_ident()}
    assert serial.as_dict() == parallel.as_dict()
    assert serial.importance_matrix.shape == (6, len(data.factor_sizes))


def recording_fit(threads: list):
    def fit(k):
        threads.append(threading.get_ident())
        return k * k

    return fit


@pytest.mark.parametrize("n_jobs", [1, 2, 3, -1])
def test_per_factor_returns_the_fits_in_factor_order(n_jobs, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    threads = []
    assert per_factor(recording_fit(threads), 5, n_jobs) == [0, 1, 4, 9, 16]
    # The fits run in this process (a list filled in a worker process would stay empty here), in threads
    # other than this one as soon as more than one is asked for.
    assert len(threads) == 5
    assert (set(threads) == {threading.get_ident()}) == (n_jobs == 1)
    assert per_factor(recording_fit([]), 0, n_jobs) == []


def test_per_factor_runs_in_this_thread_unless_asked():
    threads = []
    assert per_factor(recording_fit(threads), 4) == [0, 1, 4, 9]
    assert set(threads) == {threading.get_ident()}


def test_per_factor_starts_no_more_threads_than_factors_or_cores(monkeypatch):
    import joblib

    asked = []

    class RecordingParallel(joblib.Parallel):
        def __init__(self, n_jobs, **kwargs):
            asked.append((n_jobs, kwargs))
            super().__init__(n_jobs=n_jobs, **kwargs)

    monkeypatch.setattr(joblib, "Parallel", RecordingParallel)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert per_factor(recording_fit([]), 2, 8) == [0, 1]  # two factors: two threads, not eight
    assert per_factor(recording_fit([]), 5, -1) == [0, 1, 4, 9, 16]  # -1: every core, three here
    assert asked == [(2, {"prefer": "threads"}), (3, {"prefer": "threads"})]
    # An unknown core count runs in order, in this thread.
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    threads = []
    assert per_factor(recording_fit(threads), 3, -1) == [0, 1, 4]
    assert set(threads) == {threading.get_ident()} and len(asked) == 2


@pytest.mark.parametrize("n_jobs", [0, -2, 1.5, True, "2", None])
def test_per_factor_refuses_a_thread_count_that_is_not_one(n_jobs):
    with pytest.raises(MetricError, match="n_jobs must be a positive count of threads or -1"):
        per_factor(recording_fit([]), 3, n_jobs)


def test_sap_identity_vs_noise():
    data = small_data()
    good = sap(data, identity, num_train=500, num_test=300)
    bad = sap(data, noise(6), num_train=500, num_test=300)
    assert good.score > bad.score + 0.1 and bad.score < 0.05
    gen = torch.Generator().manual_seed(0)
    y = torch.stack([torch.randint(0, s, (1000,), generator=gen) for s in (3, 6, 10)], dim=1)
    continuous = sap_from_codes(y.double(), y, None, None, continuous_factors=True)
    assert continuous.score > 0.95
    np.testing.assert_allclose(np.diag(continuous.score_matrix), 1.0, atol=1e-12)
    json.dumps(good.as_dict())


def test_modularity_explicitness_identity_vs_noise():
    data = small_data()
    good = modularity_explicitness(data, identity, num_train=1000, num_test=300)
    bad = modularity_explicitness(data, noise(6), num_train=1000, num_test=300)
    assert good.modularity > 0.95 and good.modularity > bad.modularity
    assert good.explicitness_test > 0.8 and abs(bad.explicitness_test - 0.5) < 0.1
    json.dumps(good.as_dict())


def test_data_level_metrics_refuse_chairs():
    chairs = small_data(has_ground_truth=False)
    for metric in (beta_vae_score, dci, sap, modularity_explicitness):
        with pytest.raises(ValueError, match="has no ground-truth factors"):
            metric(chairs, identity)


# ---------------------------------------------------------------- latents used, ELBO
def test_latents_used():
    logvar = torch.zeros(100, 6)
    logvar[:, :2] = -4.0  # std 0.135: used
    logvar[:, 2] = 2 * math.log(0.6)  # std 0.6: unused
    result = latents_used(logvar)
    assert result.score == 2 and result.used.tolist() == [True, True, False, False, False, False]
    assert latents_used(std=logvar.mul(0.5).exp()).score == 2
    json.dumps(result.as_dict())
    with pytest.raises(ValueError):
        latents_used()


def test_evaluate_elbo():
    def encode(x):
        mean = x.flatten(1)[:, :2] * 0.0 + 1.0  # KL per image: 0.5 * (1 + 0.16 - 1 - ln 0.16) summed over 2 dims
        return mean, torch.full_like(mean, math.log(0.16))

    def decode_nll(z, x):
        return (z - 1.0).pow(2).sum(1) + 3.0

    kl = 2 * 0.5 * (1.0 + 0.16 - 1.0 - math.log(0.16))
    exact = evaluate_elbo(small_data(), encode, decode_nll, num_images=500, sample=False, chunk_size=128)
    assert exact.nll == pytest.approx(3.0) and exact.kl == pytest.approx(kl) and exact.elbo == pytest.approx(3.0 + kl)
    assert exact.num_images == 500 and exact.latents_used == 2
    sampled = evaluate_elbo(small_data(), encode, decode_nll, num_images=4000)
    assert sampled.nll == pytest.approx(3.0 + 2 * 0.16, abs=0.05)  # E (z - mean)^2 = var per dim
    assert sampled.as_dict() == evaluate_elbo(small_data(), encode, decode_nll, num_images=4000).as_dict()
    batches = [torch.rand(64, 3, 1, 1) for _ in range(4)]  # any iterable of held-out images (chairs)
    assert evaluate_elbo(batches, encode, decode_nll, num_images=200, sample=False).num_images == 200
    json.dumps(exact.as_dict())
