"""FactorVAE: gradient isolation both ways, the permutation, training steps and divergence handling."""
import json
import os

import pytest
import torch

from sbvae import keyed
from sbvae.factorvae import FactorVAE
from sbvae.objectives import permute_dims
from test_training import fit, run_dirs, tags


def tiny_model(**kw):
    return FactorVAE(image_size=16, channels=3, encoder_options={"channels": [8] * 4, "hidden": 32},
                     decoder_options={"channels": [8, 8]}, disc_hidden=32, disc_layers=2, **kw)


def grads(loss, params):
    return [g for g in torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)]


def vae_params(model):
    return list(model.encoder.parameters()) + list(model.decoder.parameters())


def step_terms(model, x, seed=0):
    draw = lambda purpose: keyed.stream(purpose, seed, 0, 0)
    return model.loss_terms(x, **model.step_randomness(x.shape[0], draw))


def test_discriminator_loss_does_not_reach_encoder_or_decoder():
    torch.manual_seed(0)
    model = tiny_model()
    losses = step_terms(model, torch.rand(8, 3, 16, 16))
    assert all(g is None for g in grads(losses["disc_loss"], vae_params(model)))
    # ... while it does train the discriminator
    assert all(g is not None and g.abs().sum() > 0 for g in grads(losses["disc_loss"], model.discriminator.parameters()))


def test_vae_loss_does_not_reach_discriminator_but_tc_reaches_encoder():
    torch.manual_seed(0)
    model = tiny_model()
    losses = step_terms(model, torch.rand(8, 3, 16, 16))
    assert all(g is None for g in grads(losses["loss"], model.discriminator.parameters()))
    tc_grads = grads(losses["tc"], model.encoder.parameters())
    assert any(g is not None and g.abs().sum() > 0 for g in tc_grads)


def test_vae_loss_is_beta_vae_plus_gamma_tc():
    torch.manual_seed(0)
    model = tiny_model(gamma=7.0, beta=3.0)
    t = step_terms(model, torch.rand(8, 3, 16, 16))
    torch.testing.assert_close(t["loss"], t["nll"] + 3.0 * t["kl"] + 7.0 * t["tc"])
    torch.testing.assert_close(t["elbo"], t["nll"] + t["kl"])


def test_permutation_keeps_marginals_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4096, 1, generator=g)
    z = torch.cat([base, base + 0.01 * torch.randn(4096, 1, generator=g), torch.randn(4096, 1, generator=g)], 1)
    p = permute_dims(z, torch.rand(z.shape, generator=torch.Generator().manual_seed(1)))
    for d in range(3):  # each column is a permutation of the original column
        torch.testing.assert_close(p[:, d].sort().values, z[:, d].sort().values)
    corr_before = torch.corrcoef(z.T)[0, 1]
    corr_after = torch.corrcoef(p.T)[0, 1]
    assert corr_before > 0.99 and corr_after.abs() < 0.05
    assert not torch.equal(p[:, 0], z[:, 0])


def test_factorvae_quickstart_trains_and_logs_tc_and_disc(tmp_path, config_path):
    fit(config_path("quickstart-factorvae.yaml"), tmp_path)
    (run,) = run_dirs(tmp_path, "quickstart-factorvae")
    scalars = tags(run).Tags()["scalars"]
    for name in ("train/loss", "train/tc", "train/disc_loss", "train/disc_accuracy", "train/kl", "val/elbo"):
        assert name in scalars, scalars
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6  # one global step per iteration, not one per optimizer
    assert len(ckpt["optimizer_states"]) == 2


def test_factorvae_divergence_keeps_checkpoint_and_marks_run(tmp_path, config_path, capsys):
    fit(config_path("quickstart-factorvae.yaml"), tmp_path)
    last = os.path.join(run_dirs(tmp_path, "quickstart-factorvae")[0], "checkpoints", "last.ckpt")
    before = open(last, "rb").read()
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart-factorvae.yaml"), tmp_path, "--trainer.max_steps", "9", "--ckpt_path", last,
            "--model.init_args.max_loss", "1.0")
    assert exit_info.value.code == 3
    assert "diverged at step 6" in capsys.readouterr().err
    assert open(last, "rb").read() == before
    status = json.load(open(os.path.join(os.path.dirname(os.path.dirname(last)), "status.json")))
    assert status["status"] == "diverged"
