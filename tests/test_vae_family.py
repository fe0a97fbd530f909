"""beta-TCVAE, DIP-VAE-I/II and AnnealedVAE: each loss against an independent computation, then through a Trainer.

The independent values are computed here in float64 with numpy and torch.distributions, from the
formulas of disentanglement_lib's methods/unsupervised/vae.py (Locatello et al. 2019), never by calling
the functions under test.
"""

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from sbvae import objectives
from sbvae.errors import SBVAEError
from sbvae.vae_family import DIPVAE, AnnealedVAE, BetaTCVAE
from test_engine import SMALL, make_engine, tiny_data
from test_training import TINY, fit, run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(seed=0, b=7, d=4):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64) - 1.0
    z = mean + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g, dtype=torch.float64)
    nll = 100 + torch.rand(b, generator=g, dtype=torch.float64)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)
    return nll, kl, z, mean, logvar


def tc_by_loops(z, mean, logvar):
    """E_i[log sum_j prod_d q(z_id | x_j) - sum_d log sum_j q(z_id | x_j)], one sample at a time."""
    z, mean, std = z.numpy(), mean.numpy(), np.exp(0.5 * logvar.numpy())
    values = []
    for i in range(len(z)):
        density = Normal(torch.tensor(mean), torch.tensor(std)).log_prob(torch.tensor(z[i])).numpy()  # [j, d]
        joint = np.log(np.sum(np.exp(density.sum(1))))
        product = np.sum(np.log(np.sum(np.exp(density), axis=0)))
        values.append(joint - product)
    return float(np.mean(values))


# ---------------------------------------------------------------- beta-TCVAE
def test_the_gaussian_log_density_is_torch_distributions_log_prob():
    _, _, z, mean, logvar = batch(seed=5)
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(z)
    torch.testing.assert_close(objectives.gaussian_log_density(z, mean, logvar), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["betatcvae", "dipvae", "annealedvae"])
def test_every_objective_reports_the_same_elbo_nll_and_kl_columns(loss):
    """The shared columns the report compares across objectives: batch means of the per-image terms."""
    nll, kl, z, mean, logvar = batch(seed=6)
    terms = {
        "betatcvae": lambda: objectives.beta_tcvae_loss(nll, kl, z, mean, logvar, 3.0),
        "dipvae": lambda: objectives.dip_vae_loss(nll, kl, mean, logvar, "i", 1.0, 10.0),
        "annealedvae": lambda: objectives.annealed_vae_loss(nll, kl, torch.tensor(3), 100.0, 10.0, 9),
    }[loss]()
    assert float(terms["nll"]) == pytest.approx(float(np.mean(nll.numpy())), rel=1e-12)
    assert float(terms["kl"]) == pytest.approx(float(np.mean(kl.numpy())), rel=1e-12)
    assert float(terms["elbo"]) == pytest.approx(float(np.mean(nll.numpy() + kl.numpy())), rel=1e-12)


def test_the_minibatch_total_correlation_equals_its_definition_sample_by_sample():
    _, _, z, mean, logvar = batch()
    got = objectives.minibatch_total_correlation(z, mean, logvar)
    assert float(got) == pytest.approx(tc_by_loops(z, mean, logvar), rel=1e-10)


def test_identical_posteriors_give_the_omitted_normaliser_exactly():
    """Every mixture is one Gaussian: log q(z) = log B + log N, each marginal likewise, so the estimate is
    -(D - 1) log B, the constant disentanglement_lib leaves out (its comment: (D - 1) log(B N))."""
    b, d = 6, 5
    mean = torch.full((b, d), 0.3, dtype=torch.float64)
    logvar = torch.full((b, d), -0.7, dtype=torch.float64)
    z = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = objectives.minibatch_total_correlation(z, mean, logvar)
    assert float(got) == pytest.approx(-(d - 1) * math.log(b), rel=1e-12)


def test_beta_tcvae_loss_adds_beta_minus_one_times_tc_to_the_elbo():
    nll, kl, z, mean, logvar = batch()
    terms = objectives.beta_tcvae_loss(nll, kl, z, mean, logvar, beta=6.0)
    tc = tc_by_loops(z, mean, logvar)
    elbo = float(nll.mean() + kl.mean())
    assert float(terms["tc"]) == pytest.approx(tc, rel=1e-10)
    assert float(terms["elbo"]) == pytest.approx(elbo, rel=1e-12)
    assert float(terms["loss"]) == pytest.approx(elbo + 5.0 * tc, rel=1e-10)
    one = objectives.beta_tcvae_loss(nll, kl, z, mean, logvar, beta=1.0)
    assert float(one["loss"]) == pytest.approx(elbo, rel=1e-12)  # beta 1 is the plain VAE


# ---------------------------------------------------------------- DIP-VAE
def dip_by_hand(mean, logvar, kind, lambda_od, lambda_d):
    m = mean.numpy()
    cov = np.cov(m, rowvar=False, bias=True)  # normalised by B, as E[mm^T] - E[m]E[m]^T
    if kind == "ii":
        cov = cov + np.diag(np.exp(logvar.numpy()).mean(0))
    off = cov - np.diag(np.diag(cov))
    return lambda_od * np.sum(off**2) + lambda_d * np.sum((np.diag(cov) - 1) ** 2)


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_vae_loss_is_the_elbo_plus_the_covariance_penalty(kind):
    nll, kl, _, mean, logvar = batch(seed=2)
    terms = objectives.dip_vae_loss(nll, kl, mean, logvar, kind, lambda_od=3.0, lambda_d=7.0)
    dip = dip_by_hand(mean, logvar, kind, 3.0, 7.0)
    assert float(terms["dip"]) == pytest.approx(dip, rel=1e-10)
    assert float(terms["loss"]) == pytest.approx(float(nll.mean() + kl.mean()) + dip, rel=1e-10)


def test_dip_penalty_is_zero_exactly_at_whitened_codes():
    """Means whose batch covariance is I (a scaled orthogonal design) cost nothing under DIP-VAE-I."""
    raw = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q, _ = torch.linalg.qr(raw - raw.mean(0))  # orthonormal columns that each sum to 0, as the centred ones do
    mean = q * math.sqrt(8)
    assert torch.allclose(objectives.covariance(mean), torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(objectives.dip_regularizer(objectives.covariance(mean), 5.0, 50.0)) == pytest.approx(0.0, abs=1e-20)


def test_the_dip_covariance_stays_float32_under_mixed_precision():
    """Autocast would run the covariance's product in bf16 (about 0.4% off); the penalty is a float32 loss."""
    mean = torch.randn(64, 10, generator=torch.Generator().manual_seed(4)) * 3.0
    exact = objectives.covariance(mean)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = objectives.covariance(mean)
        lowered = mean.T @ mean  # what the product would be without the guard
    assert lowered.dtype == torch.bfloat16  # so the test can tell the two apart
    assert mixed.dtype == torch.float32 and torch.equal(mixed, exact)


@pytest.mark.parametrize("kind, factor", [("i", 10.0), ("ii", 1.0)])
def test_dip_vae_takes_disentanglement_libs_lambda_d_unless_given(kind, factor):
    assert DIPVAE(kind=kind, lambda_od=2.0, **SMALL).lambda_d == 2.0 * factor
    assert DIPVAE(kind=kind, lambda_od=2.0, lambda_d=0.5, **SMALL).lambda_d == 0.5


def test_dip_vae_refuses_an_unknown_kind_by_name():
    with pytest.raises(SBVAEError, match="kind i or ii"):
        DIPVAE(kind="iii", **SMALL)


# ---------------------------------------------------------------- AnnealedVAE
@pytest.mark.parametrize("step, capacity", [(0, 0.0), (25, 5.0), (100, 20.0), (150, 20.0)])
def test_the_capacity_rises_linearly_then_stays_at_c_max(step, capacity):
    assert float(objectives.annealed_capacity(20.0, torch.tensor(step), 100)) == pytest.approx(capacity, rel=1e-6)


def test_annealed_loss_is_nll_plus_gamma_times_the_kl_distance_from_the_capacity():
    nll, kl, *_ = batch(seed=4)
    for step in (0, 30):  # KL above C, then (with C past the KL) below it: the absolute value's two sides
        c = min(100.0, 100.0 * step / 40)
        terms = objectives.annealed_vae_loss(
            nll, kl, torch.tensor(step), gamma=1000.0, c_max=100.0, iteration_threshold=40
        )
        expected = float(nll.mean()) + 1000.0 * abs(float(kl.mean()) - c)
        assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)
        assert float(terms["capacity"]) == pytest.approx(c, rel=1e-6)


# ---------------------------------------------------------------- the models through the engine
def by_hand_loss(model, x, noise, step=None):
    """The model's objective recomputed from its posterior with the independent formulas above."""
    with torch.no_grad():
        t = model.posterior_terms(x, noise)
    nll, kl = t.nll.double(), t.kl.double()
    z, mean, logvar = t.z.double(), t.mean.double(), t.logvar.double()
    elbo = float(nll.mean() + kl.mean())
    if isinstance(model, BetaTCVAE):
        return elbo + (model.hparams.beta - 1) * tc_by_loops(z, mean, logvar)
    if isinstance(model, DIPVAE):
        return elbo + dip_by_hand(mean, logvar, model.hparams.kind, model.hparams.lambda_od, model.lambda_d)
    c = min(model.hparams.c_max, model.hparams.c_max * step / model.hparams.iteration_threshold)
    return float(nll.mean()) + model.hparams.gamma * abs(float(kl.mean()) - c)


MODELS = {
    "betatcvae": lambda: BetaTCVAE(beta=4.0, **SMALL),
    "dipvae-i": lambda: DIPVAE(kind="i", lambda_od=2.0, **SMALL),
    "dipvae-ii": lambda: DIPVAE(kind="ii", lambda_od=2.0, **SMALL),
    "annealedvae": lambda: AnnealedVAE(gamma=10.0, c_max=30.0, iteration_threshold=4, **SMALL),
}


@pytest.mark.parametrize("name", MODELS)
def test_each_models_training_loss_equals_its_objective_recomputed_by_hand(name):
    """The engine's loss at steps 0-5, drawn in blocks of 4 (the CPU's default), against the formulas on
    the same images and noise: for AnnealedVAE the capacity must follow the step counter across blocks."""
    from sbvae import keyed

    torch.manual_seed(0)
    model = MODELS[name]()
    reference = MODELS[name]()
    dm = tiny_data()
    engine, _ = make_engine(model, dm, draw_ahead=4)
    for step in range(6):
        reference.load_state_dict(model.state_dict())
        x = dm.training_batch(5, 0, step, torch.device("cpu"))
        noise = keyed.stream(keyed.POSTERIOR, 5, 0, step).normal((8, 10))
        expected = by_hand_loss(reference.train(), x, noise, step)
        terms = engine.step()
        assert float(terms["loss"]) == pytest.approx(expected, rel=2e-5), (name, step)
        if name == "annealedvae":
            assert float(terms["capacity"]) == pytest.approx(min(30.0, 30.0 * step / 4))


def test_annealed_vae_needs_the_step_outside_the_engine():
    model = AnnealedVAE(**SMALL)
    terms = model.posterior_terms(torch.rand(2, 3, 16, 16), torch.randn(2, 10))
    with pytest.raises(SBVAEError, match="needs the training step"):
        model.objective(terms)


# ---------------------------------------------------------------- through a Trainer: replicas, kill and resume
OBJECTIVE_CONFIGS = {
    "betatcvae": "betatcvae-sbd",
    "dipvae-i": "dipvae-i-sbd",
    "dipvae-ii": "dipvae-ii-sbd",
    "annealedvae": "annealedvae-sbd",
}
SHRINK = [
    "--model.init_args.encoder_options",
    "{channels: [8, 8, 8, 8], hidden: 32}",
    "--model.init_args.decoder_options",
    "{channels: [8, 8]}",
    "--trainer.max_steps",
    "8",
    "--replicas",
    "2",
]


def replica_weights(run, k):
    ckpt = torch.load(
        os.path.join(run, f"replica_{k}", "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True
    )
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.mark.parametrize("name", OBJECTIVE_CONFIGS)
def test_each_objective_trains_as_replicas_and_resumes_bit_for_bit_after_a_kill(tmp_path, name):
    """kill -9 after the step-3 checkpoint, resume: every replica's weights equal the unbroken run's.
    AnnealedVAE's threshold of 4 steps makes its capacity change across the kill."""
    config = os.path.join(ROOT, "configs", "sprites", OBJECTIVE_CONFIGS[name] + ".yaml")
    extra = SHRINK + (["--model.init_args.iteration_threshold", "4"] if name == "annealedvae" else [])
    fit(config, tmp_path / "straight", *extra)
    log_name = f"sprites-{OBJECTIVE_CONFIGS[name]}"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config,
        *TINY,
        *extra,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "killed"),
        "--trainer.callbacks+=ddp_probe.KillAt",
        "--trainer.callbacks.step=5",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (killed,) = run_dirs(tmp_path / "killed", log_name)
    assert replica_weights(killed, 0)[0] == 3
    fit(config, tmp_path / "killed", *extra, "--ckpt_path", killed)
    (straight,) = run_dirs(tmp_path / "straight", log_name)
    for k in range(2):
        (step_a, resumed), (step_b, unbroken) = replica_weights(killed, k), replica_weights(straight, k)
        assert step_a == step_b == 8
        assert resumed.keys() == unbroken.keys()
        assert all(torch.equal(resumed[n], unbroken[n]) for n in unbroken), (name, k)
    first = [next(iter(replica_weights(straight, k)[1].values())) for k in range(2)]
    assert not torch.equal(*first)  # two seeds, two models
