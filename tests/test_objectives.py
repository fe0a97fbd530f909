"""sbvae.objectives against values worked out by hand (nats per image) or by torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sbvae import objectives as ob
from sbvae.module import VAE

LN3 = math.log(3.0)


def test_bernoulli_nll_is_the_cross_entropy_summed_per_image():
    # sigmoid(ln 3) = 3/4: a pixel at 1 costs -ln(3/4), at 0 -ln(1/4), at 0.5 the mean of the two.
    logits = torch.full((2, 1, 2, 2), LN3)
    x = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    one, zero = -math.log(0.75), -math.log(0.25)
    expected = torch.tensor([2 * one + zero + 0.5 * (one + zero), 4 * zero])
    torch.testing.assert_close(ob.bernoulli_nll(logits, x), expected)


@pytest.mark.parametrize("variance", [0.3, 2.0])
def test_gaussian_nll_is_a_normalised_log_density(variance):
    mean = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2]])
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.2, 0.7]])
    expected = -Normal(mean, math.sqrt(variance)).log_prob(x).sum(1)
    torch.testing.assert_close(ob.gaussian_nll(mean, x, variance), expected)
    # At x = mean only the normalising constant remains: 0.5 ln(2 pi 0.3) = 0.3169521 per pixel.
    assert float(ob.gaussian_nll(x, x, 0.3)[0]) == pytest.approx(3 * 0.3169521, abs=1e-6)


def test_reconstruction_nll_dispatches_on_the_likelihood():
    out, x = torch.full((1, 1, 1, 2), LN3), torch.ones(1, 1, 1, 2)
    torch.testing.assert_close(ob.reconstruction_nll(out, x, "bernoulli"), torch.tensor([-2 * math.log(0.75)]))
    gauss = 2 * (0.5 * (1 - LN3) ** 2 / 0.3 + 0.5 * math.log(2 * math.pi * 0.3))  # the default variance, 0.3
    torch.testing.assert_close(ob.reconstruction_nll(out, x, "gaussian"), torch.tensor([gauss]))
    torch.testing.assert_close(ob.reconstruction_nll(out, x, "gaussian", 2.0), ob.gaussian_nll(out, x, 2.0))
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        ob.reconstruction_nll(out, x, "poisson")


def test_mean_image_is_the_sigmoid_or_the_clamped_mean():
    out = torch.tensor([-1.0, 0.0, 0.5, LN3, 2.0])
    torch.testing.assert_close(
        ob.mean_image(out, "bernoulli"), torch.tensor([1 / (1 + math.e), 0.5, 0.6224593, 0.75, 0.8807971])
    )
    torch.testing.assert_close(ob.mean_image(out, "gaussian"), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_gaussian_kl_against_closed_form_and_torch():
    # mean 1, var 1: 0.5; mean 0, var 4: 0.5 (4 - 1 - ln 4); summed over the latents of each image.
    mean = torch.tensor([[1.0, 0.0], [0.3, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.5, 0.7]])
    kl = ob.gaussian_kl(mean, logvar)
    assert float(kl[0]) == pytest.approx(0.5 + 0.5 * (3.0 - math.log(4.0)), abs=1e-6)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl, expected)


def test_reparameterize_scales_noise_by_the_standard_deviation():
    z = ob.reparameterize(torch.tensor([1.0, -1.0]), torch.tensor([math.log(4.0), 0.0]), torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(z, torch.tensor([2.0, -3.0]))


def test_beta_vae_loss_weights_only_the_kl_in_the_loss():
    terms = ob.beta_vae_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0]), beta=4.0)
    assert [float(t) for t in (terms.loss, terms.elbo, terms.nll, terms.kl)] == [14.0, 5.0, 2.0, 3.0]


def test_permute_dims_orders_each_column_by_its_keys():
    z = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]])
    keys = torch.tensor([[0.3, 0.1], [0.1, 0.2], [0.2, 0.3]])
    # Column 0's keys sort rows as 1, 2, 0; column 1's as 0, 1, 2.
    assert ob.permute_dims(z, keys).tolist() == [[1.0, 10.0], [2.0, 11.0], [0.0, 12.0]]


def test_total_correlation_is_the_mean_logit_difference_joint_minus_permuted():
    assert float(ob.total_correlation_estimate(torch.tensor([[3.0, 1.0], [1.0, 0.0]]))) == 1.5


def test_discriminator_loss_labels_joint_0_and_permuted_1():
    # joint row: p(class 0) = 3/4; permuted rows: p(class 1) = 7/8 and 1/2. Mean over each batch, then halved.
    joint = torch.tensor([[LN3, 0.0]])
    permuted = torch.tensor([[0.0, math.log(7.0)], [0.0, 0.0]])
    expected = 0.5 * (-math.log(0.75) + 0.5 * (-math.log(0.875) - math.log(0.5)))
    assert float(ob.discriminator_loss(joint, permuted)) == pytest.approx(expected, abs=1e-6)


def test_vae_loss_with_gaussian_likelihood_and_beta():
    """The model's objective from its own parts: Gaussian NLL of the decoded sample plus beta KL."""
    torch.manual_seed(0)
    model = VAE(
        image_size=16,
        channels=1,
        likelihood="gaussian",
        gaussian_variance=0.5,
        beta=3.0,
        encoder_options={"channels": [4] * 4, "hidden": 8},
        decoder_options={"channels": [4]},
    )
    x, noise = torch.rand(3, 1, 16, 16), torch.randn(3, 10)
    terms = model.loss_terms(x, noise)
    mean, logvar = model.encode(x)
    z = mean + noise * (0.5 * logvar).exp()
    nll = -Normal(model.decode(z), math.sqrt(0.5)).log_prob(x).flatten(1).sum(1).mean()
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(terms["nll"], nll)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], nll + 3.0 * kl)
    torch.testing.assert_close(terms["elbo"], nll + kl)
    torch.testing.assert_close(model.reconstruct(x), model.decode(mean).clamp(0, 1))
