"""FactorVAE: gradient isolation both ways, the permutation, training steps and divergence handling."""

import os
import types

import lightning as L
import pytest
import torch

from sbvae import keyed
from sbvae.data import GroundTruthDataModule
from sbvae.errors import SBVAEError
from sbvae.factorvae import FactorVAE
from sbvae.objectives import permute_dims
from test_training import fit, run_dirs, tags


def tiny_model(**kw):
    return FactorVAE(
        image_size=16,
        channels=3,
        encoder_options={"channels": [8] * 4, "hidden": 32},
        decoder_options={"channels": [8, 8]},
        disc_hidden=32,
        disc_layers=2,
        **kw,
    )


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
    assert all(
        g is not None and g.abs().sum() > 0 for g in grads(losses["disc_loss"], model.discriminator.parameters())
    )


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


def fit_steps(model, steps=1):
    """``steps`` optimisation steps of ``model`` under a plain Lightning Trainer (no CLI, no callbacks)."""
    dm = GroundTruthDataModule(
        "colored-sprites", image_size=16, batch_size=8, steps_per_epoch=steps, val_size=8, seed=0
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_training_step_moves_each_network_by_its_own_optimiser():
    # Adam's first step moves every weight with a gradient by lr * g / (|g| + eps): by its learning rate, to
    # within eps.  So the largest change of each network names the optimiser that stepped it.
    torch.manual_seed(0)
    model = tiny_model(lr=2e-3, disc_lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = fit_steps(model)
    moved = {
        net: max(float((v - before[k]).abs().max()) for k, v in model.state_dict().items() if k.startswith(net))
        for net in ("encoder.", "decoder.", "discriminator.")
    }
    assert moved["discriminator."] == pytest.approx(1e-2, rel=1e-3)
    assert moved["encoder."] == pytest.approx(2e-3, rel=1e-3) and moved["decoder."] == pytest.approx(2e-3, rel=1e-3)
    vae_opt, disc_opt = trainer.optimizers
    held = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}
    assert held(disc_opt) == {id(p) for p in model.discriminator.parameters()}
    assert held(vae_opt) == {id(p) for n, p in model.named_parameters() if not n.startswith("discriminator.")}
    # The discriminator's Adam has Kim & Mnih's betas; the VAE's keeps Adam's own.
    assert [(g["lr"], g["betas"]) for g in disc_opt.param_groups] == [(1e-2, (0.5, 0.9))]
    assert [(g["lr"], g["betas"]) for g in vae_opt.param_groups] == [(2e-3, (0.9, 0.999))]


@pytest.mark.parametrize("bias, says", [((10.0, 0.0), "joint"), ((0.0, 10.0), "permuted")])
def test_discriminator_accuracy_counts_each_half_by_its_own_label(bias, says):
    # A discriminator that answers the same for every sample is right on exactly one half of the batch.
    torch.manual_seed(0)
    model = tiny_model()
    last = model.discriminator.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))
    terms = step_terms(model, torch.rand(8, 3, 16, 16))
    assert float(terms["disc_accuracy"]) == 0.5
    assert float(terms["tc"]) == (10.0 if says == "joint" else -10.0)  # logit(joint) - logit(permuted)


@pytest.mark.parametrize(
    "precision, refused", [("16-mixed", True), ("16-true", True), ("bf16-mixed", False), ("32-true", False)]
)
def test_fp16_is_refused_before_training(precision, refused):
    # The engine has no loss scaler; checked on a stand-in trainer (a CPU Trainer turns fp16 into bf16).
    from sbvae.module import VAE
    from sbvae.replicas import ReplicaSet

    plain = VAE(
        image_size=16,
        channels=3,
        encoder_options={"channels": [8] * 4, "hidden": 32},
        decoder_options={"channels": [8, 8]},
    )
    for model in (tiny_model(), plain, ReplicaSet(plain, [0, 1])):
        model._trainer = types.SimpleNamespace(precision=precision)
        if refused:
            with pytest.raises(SBVAEError, match=f"does not support precision '{precision}'"):
                model.on_fit_start()
        else:
            model.on_fit_start()
