"""FactorVAE: gradient isolation both ways, the permutation, training steps and divergence handling."""
import json
import os

import pytest
import torch

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


def test_discriminator_loss_does_not_reach_encoder_or_decoder():
    torch.manual_seed(0)
    model = tiny_model()
    losses = model.losses(torch.rand(8, 3, 16, 16))
    assert all(g is None for g in grads(losses["disc_loss"], vae_params(model)))
    # ... while it does train the discriminator
    assert all(g is not None and g.abs().sum() > 0 for g in grads(losses["disc_loss"], model.discriminator.parameters()))


def test_vae_loss_does_not_reach_discriminator_but_tc_reaches_encoder():
    torch.manual_seed(0)
    model = tiny_model()
    losses = model.losses(torch.rand(8, 3, 16, 16))
    assert all(g is None for g in grads(losses["vae_loss"], model.discriminator.parameters()))
    tc_grads = grads(losses["tc"], model.encoder.parameters())
    assert any(g is not None and g.abs().sum() > 0 for g in tc_grads)


def test_training_step_updates_each_network_only_from_its_own_loss():
    """One real optimisation step: with gamma = 0 the encoder moves exactly as a plain VAE's would."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    a, b = tiny_model(gamma=0.0), tiny_model(gamma=0.0)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.automatic_optimization = True  # drive the step by hand, outside a Trainer
    opt_a, _ = a.configure_optimizers()
    torch.manual_seed(1)
    loss = a.losses(x)
    opt_a.zero_grad()
    (loss["vae_loss"] + loss["disc_loss"]).backward()  # what training_step backpropagates
    opt_a.step()
    opt_b = torch.optim.Adam(vae_params(b), lr=b.hparams.lr)
    torch.manual_seed(1)
    nll, kl, _, _ = b.per_image_terms(x)
    opt_b.zero_grad()
    (nll.mean() + kl.mean()).backward()
    opt_b.step()
    for pa, pb in zip(vae_params(a), vae_params(b)):
        torch.testing.assert_close(pa, pb)


def test_permutation_keeps_marginals_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4096, 1, generator=g)
    z = torch.cat([base, base + 0.01 * torch.randn(4096, 1, generator=g), torch.randn(4096, 1, generator=g)], 1)
    p = permute_dims(z, torch.Generator().manual_seed(1))
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
