"""Replica-parallel training: replica k is the single run with seed base + k, frozen alone when it diverges."""
import json
import os

import torch

from sbvae.cli.evaluate import main as evaluate
from sbvae.engine import Engine
from sbvae.factorvae import FactorVAE
from sbvae.module import VAE
from sbvae.replicas import ReplicaSet
from test_engine import SMALL, make_engine, tiny_data
from test_training import final_weights, fit, run_dirs, tags


def test_replica_k_equals_the_single_run_with_seed_base_plus_k(tmp_path, config_path):
    for seed in (4, 5, 6):
        fit(config_path("quickstart.yaml"), tmp_path / f"single{seed}", "--seed_everything", str(seed))
    fit(config_path("quickstart.yaml"), tmp_path / "replicas", "--seed_everything", "4", "--replicas", "3")
    (run,) = run_dirs(tmp_path / "replicas")
    single_dir = lambda seed: run_dirs(tmp_path / f"single{seed}")[0]
    for k, seed in enumerate((4, 5, 6)):
        single = final_weights(run_dirs(tmp_path / f"single{seed}")[0])
        replica = final_weights(os.path.join(run, f"replica_{k}"))
        assert replica.keys() == single.keys()
        for name in single:  # vmap runs grouped convolutions: equal up to float rounding
            torch.testing.assert_close(replica[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
        status = json.load(open(os.path.join(run, f"replica_{k}", "status.json")))
        assert status["status"] == "completed" and status["seed"] == seed and status["global_step"] == 6
        # Its TensorBoard curve is the single run's: the same steps, the same values.
        ours, theirs = (tags(d).Scalars("train/loss") for d in (os.path.join(run, f"replica_{k}"), single_dir(seed)))
        assert [e.step for e in ours] == [e.step for e in theirs] == list(range(6))
        torch.testing.assert_close([e.value for e in ours], [e.value for e in theirs], rtol=1e-4, atol=0)
        # Its best checkpoint is the one the single run's ModelCheckpoint kept (by val/elbo), with its weights.
        (best,) = [f for f in os.listdir(os.path.join(single_dir(seed), "checkpoints")) if f.startswith("best-")]
        assert sorted(os.listdir(os.path.join(run, f"replica_{k}", "checkpoints"))) == [best, "last.ckpt"]
        mine = torch.load(os.path.join(run, f"replica_{k}", "checkpoints", best), weights_only=True)["state_dict"]
        for name, value in torch.load(os.path.join(single_dir(seed), "checkpoints", best), weights_only=True)["state_dict"].items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not [f for f in os.listdir(os.path.join(run, "checkpoints")) if f.startswith("best-")]  # no best of the mean

    # A replica's checkpoint is a single run's: sbvae-eval gives the same numbers on both (quick preset).
    single_ckpt = os.path.join(run_dirs(tmp_path / "single5")[0], "checkpoints", "last.ckpt")
    replica_ckpt = os.path.join(run, "replica_1", "checkpoints", "last.ckpt")
    scores = []
    for ckpt in (single_ckpt, replica_ckpt):
        out = tmp_path / f"eval{len(scores)}.json"
        evaluate(["--ckpt", ckpt, "--metrics", "elbo,mig", "--preset", "quick", "--output", str(out), "--device", "cpu"])
        scores.append(json.load(open(out)))
    for metric in ("elbo", "mig"):
        a, b = (s["metrics"][metric]["score"] for s in scores)
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (metric, a, b)


def test_resume_continues_every_replica(tmp_path, config_path):
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2")
    (run,) = run_dirs(tmp_path)
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2", "--trainer.max_steps", "9", "--ckpt_path", run)
    resumed = run_dirs(tmp_path)[-1]
    for k in range(2):
        ckpt = torch.load(os.path.join(resumed, f"replica_{k}", "checkpoints", "last.ckpt"), map_location="cpu",
                          weights_only=True)
        assert ckpt["global_step"] == 9
        assert ckpt["datamodule_hyper_parameters"]["seed"] == k


def test_a_nan_in_one_replica_freezes_only_that_replica():
    torch.manual_seed(0)
    replicas = ReplicaSet(VAE(**SMALL), [0, 1, 2])
    dm = tiny_data()
    seeds = torch.tensor(replicas.seeds)
    optimizer = replicas.configure_optimizers()
    engine = Engine(replicas, [optimizer], lambda s: dm.training_batch(seeds, 0, s, "cpu"), seed=seeds, rank=0,
                    mode="eager", start_step=0, device=torch.device("cpu"), max_loss=1e6, replicas=3)
    engine.step()
    poison = torch.ones(3)
    real = replicas.loss_terms
    replicas.loss_terms = lambda x, **r: {**real(x, **r), "loss": real(x, **r)["loss"] * poison}
    before = {k: v.clone() for k, v in replicas.stacked.items()}
    poison[1] = float("nan")
    engine.step()
    poison[1] = 1.0
    engine.step()
    assert engine.bad_step.tolist() == [-1, 1, -1]
    for name, now in replicas.stacked.items():
        assert torch.equal(now[1], before[name][1]), name  # frozen at its last good step
        assert torch.isfinite(now).all()
    assert all(not torch.equal(now[k], before[n][k]) for n, now in replicas.stacked.items() for k in (0, 2)
               if now.ndim > 1 and now.shape[-1] > 1)


def test_factorvae_replicas_each_train_their_own_discriminator():
    """Replica k of a FactorVAE set is the single FactorVAE of seed k: VAE and discriminator, after 3 steps."""
    options = dict(SMALL, disc_hidden=16, disc_layers=2, max_loss=1e6)
    dm = tiny_data()
    singles = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = FactorVAE(**options)
        engine, _ = make_engine(model, dm, seed=seed)
        for _ in range(3):
            engine.step()
        singles.append(model.state_dict())
    replicas = ReplicaSet(FactorVAE(**options), [0, 1])
    seeds = torch.tensor(replicas.seeds)
    engine = Engine(replicas, list(replicas.configure_optimizers()), lambda s: dm.training_batch(seeds, 0, s, "cpu"),
                    seed=seeds, rank=0, mode="eager", start_step=0, device=torch.device("cpu"), max_loss=1e6, replicas=2)
    for _ in range(3):
        engine.step()
    for k, single in enumerate(singles):
        mine = replicas.replica_state_dict(k)
        assert any(n.startswith("discriminator.") for n in mine)
        for name, value in single.items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=f"replica {k}: {name}")
    start = ReplicaSet(FactorVAE(**options), [0, 1])  # the discriminators moved away from their initial weights
    assert all(not torch.equal(replicas.stacked[n], start.stacked[n]) for n in replicas.stacked if n.startswith("discriminator"))
