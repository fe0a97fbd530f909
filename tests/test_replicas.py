"""Replica-parallel training: replica k is the single run with seed base + k, frozen alone when it diverges."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sbvae import keyed
from sbvae.cli.evaluate import main as evaluate
from sbvae.engine import Engine
from sbvae.factorvae import FactorVAE
from sbvae.module import VAE
from sbvae.replicas import ReplicaSet
from test_engine import SMALL, make_engine, tiny_data
from test_training import TINY, final_weights, fit, run_dirs, tags


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
        # Its pictures are the single run's settings (images.num_seeds traversals, num_images reconstructions).
        mine, single = tags(os.path.join(run, f"replica_{k}")), tags(single_dir(seed))
        assert (
            sorted(mine.Tags()["images"])
            == sorted(single.Tags()["images"])
            == ["reconstructions", "traversals/seed_0", "traversals/seed_1"]
        )
        for tag in single.Tags()["images"]:
            assert [(e.step, e.width, e.height) for e in mine.Images(tag)] == [
                (e.step, e.width, e.height) for e in single.Images(tag)
            ]
        for tag, steps in (
            ("train/loss", list(range(6))),
            *((f"val/{n}", [2, 5]) for n in ("elbo", "loss", "latents_used")),
        ):
            ours, theirs = (tags(d).Scalars(tag) for d in (os.path.join(run, f"replica_{k}"), single_dir(seed)))
            assert [e.step for e in ours] == [e.step for e in theirs] == steps, tag
            torch.testing.assert_close([e.value for e in ours], [e.value for e in theirs], rtol=1e-4, atol=0)
        # Its best checkpoint is the one the single run's ModelCheckpoint kept (by val/elbo), with its weights.
        (best,) = [f for f in os.listdir(os.path.join(single_dir(seed), "checkpoints")) if f.startswith("best-")]
        assert sorted(os.listdir(os.path.join(run, f"replica_{k}", "checkpoints"))) == [best, "last.ckpt"]
        mine = torch.load(os.path.join(run, f"replica_{k}", "checkpoints", best), weights_only=True)["state_dict"]
        for name, value in torch.load(os.path.join(single_dir(seed), "checkpoints", best), weights_only=True)[
            "state_dict"
        ].items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not [f for f in os.listdir(os.path.join(run, "checkpoints")) if f.startswith("best-")]  # no best of the mean

    # A replica's checkpoint is a single run's: sbvae-eval gives the same numbers on both (quick preset).
    single_ckpt = os.path.join(run_dirs(tmp_path / "single5")[0], "checkpoints", "last.ckpt")
    replica_ckpt = os.path.join(run, "replica_1", "checkpoints", "last.ckpt")
    scores = []
    for ckpt in (single_ckpt, replica_ckpt):
        out = tmp_path / f"eval{len(scores)}.json"
        evaluate(
            ["--ckpt", ckpt, "--metrics", "elbo,mig", "--preset", "quick", "--output", str(out), "--device", "cpu"]
        )
        scores.append(json.load(open(out)))
    for metric in ("elbo", "mig"):
        a, b = (s["metrics"][metric]["score"] for s in scores)
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (metric, a, b)


def replica_checkpoints(run, replicas):
    return [
        torch.load(os.path.join(run, f"replica_{k}", "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
        for k in range(replicas)
    ]


def test_resume_continues_every_replica_exactly(tmp_path, config_path):
    """Also across a kill between the set's last.ckpt and the replicas' commit: replica 0's checkpoint of the
    set's step is still pending beside its older last.ckpt, and the resume takes the pending one."""
    fit(config_path("quickstart.yaml"), tmp_path / "cut", "--replicas", "2")
    (run,) = run_dirs(tmp_path / "cut")
    folder = os.path.join(run, "replica_0", "checkpoints")
    assert not [f for f in os.listdir(folder) if f.endswith(".pending")]  # a completed save leaves none
    os.replace(os.path.join(folder, "last.ckpt"), os.path.join(folder, ".last.ckpt.pending"))
    older = torch.load(os.path.join(folder, ".last.ckpt.pending"), weights_only=False)
    older.update(global_step=3, state_dict={n: w + 1 for n, w in older["state_dict"].items()})
    torch.save(older, os.path.join(folder, "last.ckpt"))  # the previous save's file
    # Replica 1: a second save at step 6 (a validation after a timed save) left its newer record pending. Its
    # best (made unbeatable here) is the one the resume goes on from: no later validation replaces it.
    folder_1 = os.path.join(run, "replica_1", "checkpoints")
    newer = torch.load(os.path.join(folder_1, "last.ckpt"), weights_only=False)
    newer["sbvae_replica_best"] = [-1e9, newer["sbvae_replica_best"][1]]
    torch.save(newer, os.path.join(folder_1, ".last.ckpt.pending"))
    kept_best = newer["sbvae_replica_best"][1]
    fit(
        config_path("quickstart.yaml"),
        tmp_path / "cut",
        "--replicas",
        "2",
        "--trainer.max_steps",
        "9",
        "--ckpt_path",
        run,
    )
    assert run_dirs(tmp_path / "cut") == [run]  # one run, one folder
    fit(config_path("quickstart.yaml"), tmp_path / "whole", "--replicas", "2", "--trainer.max_steps", "9")
    assert sorted(os.listdir(folder_1)) == [kept_best, "last.ckpt"]
    assert sorted(os.listdir(os.path.join(run_dirs(tmp_path / "whole")[0], "replica_1", "checkpoints")))[0] != kept_best
    resumed, whole = (replica_checkpoints(r, 2) for r in (run, run_dirs(tmp_path / "whole")[0]))
    for k in range(2):
        assert resumed[k]["global_step"] == 9 and resumed[k]["datamodule_hyper_parameters"]["seed"] == k
        for name, value in whole[k]["state_dict"].items():
            assert torch.equal(resumed[k]["state_dict"][name], value), (k, name)
        for mine, theirs in zip(resumed[k]["optimizer_states"], whole[k]["optimizer_states"]):
            for p, state in theirs["state"].items():
                for key, value in state.items():
                    assert torch.equal(torch.as_tensor(mine["state"][p][key]), torch.as_tensor(value)), (k, p, key)


def test_a_replica_resume_trains_with_the_command_lines_lr_and_this_devices_adam(tmp_path, config_path):
    import run_probes
    from test_training import as_a_gpu_run_saved_it

    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2")
    (run,) = run_dirs(tmp_path)
    for k in range(2):
        path = os.path.join(run, f"replica_{k}", "checkpoints", "last.ckpt")
        torch.save(as_a_gpu_run_saved_it(torch.load(path, map_location="cpu", weights_only=False)), path)
    run_probes.SEEN.clear()
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        "--replicas",
        "2",
        "--trainer.max_steps",
        "7",
        "--ckpt_path",
        run,
        "--model.init_args.lr",
        "1e-05",
        "--trainer.callbacks+=run_probes.OptimizerSettings",
    )
    (seen,) = run_probes.SEEN
    (group,) = seen["groups"][0]
    assert group["lr"] == 1e-05 and group["capturable"] is False and group["fused"] is True
    assert all(step.device.type == "cpu" and float(step) == 6 for step in seen["steps"])
    assert json.load(open(os.path.join(run, "status.json")))["status"] == "completed"


def test_a_diverged_replica_stays_frozen_across_a_resume(tmp_path, config_path, capsys):
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2")
    (run,) = run_dirs(tmp_path)
    frozen_dir = os.path.join(run, "replica_1")
    record = json.load(open(os.path.join(frozen_dir, "status.json")))
    # As ReplicaOutputs leaves a replica that diverged at step 3: its status, and its last good checkpoint.
    record.update(status="diverged", step=3, message="replica 1 (seed 1) diverged at step 3")
    json.dump(record, open(os.path.join(frozen_dir, "status.json"), "w"))
    kept = final_weights(frozen_dir)
    moving = final_weights(os.path.join(run, "replica_0"))
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2", "--trainer.max_steps", "9", "--ckpt_path", run)
    assert "1 of 2 replicas completed, 1 diverged (replicas [1])" in capsys.readouterr().out
    assert all(torch.equal(final_weights(frozen_dir)[n], w) for n, w in kept.items())  # untouched, never rewritten
    assert not all(torch.equal(final_weights(os.path.join(run, "replica_0"))[n], w) for n, w in moving.items())
    record = json.load(open(os.path.join(frozen_dir, "status.json")))
    assert record["status"] == "diverged" and record["step"] == 3


def test_a_run_killed_after_its_last_checkpoint_completes_on_resume(tmp_path, config_path):
    """Killed after the final checkpoint but before the replicas' statuses said "completed": the resume has no
    step left to train, and still leaves every replica completed (a sweep would otherwise retry it forever);
    a replica that had diverged stays diverged."""
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2")
    (run,) = run_dirs(tmp_path)
    for k, status in ((0, "running"), (1, "diverged")):
        folder = os.path.join(run, f"replica_{k}")
        record = json.load(open(os.path.join(folder, "status.json")))
        record.update(status=status, pid=2**22 + 12345, step=5, global_step=0)
        json.dump(record, open(os.path.join(folder, "status.json"), "w"))
    fit(config_path("quickstart.yaml"), tmp_path, "--replicas", "2", "--ckpt_path", run)
    records = [json.load(open(os.path.join(run, f"replica_{k}", "status.json"))) for k in range(2)]
    assert [r["status"] for r in records] == ["completed", "diverged"]
    assert records[0]["global_step"] == 6 and records[1]["step"] == 5


def test_replica_checkpoint_writes_report_a_full_disk_as_an_os_error(monkeypatch):
    """torch.save raises RuntimeError on a full disk; the checkpoint callback turns only OSError into its
    one-sentence message (and agrees on it across processes), so replica files must fail with OSError."""
    import contextlib
    import errno
    import pathlib

    from sbvae import runs
    from sbvae.replicas import outputs as module

    @contextlib.contextmanager
    def full_disk(final):
        yield pathlib.Path("/dev/full")  # every write there fails with ENOSPC

    monkeypatch.setattr(runs, "atomic_path", full_disk)
    with pytest.raises(OSError) as caught:
        module._save({"state_dict": {"w": torch.ones(1000)}}, "ignored/last.ckpt")
    assert caught.value.errno == errno.ENOSPC


def test_a_share_whose_replicas_all_diverged_before_any_checkpoint_resumes_with_empty_moments():
    replicas = ReplicaSet(VAE(**SMALL), [0, 1])
    replicas._frozen_at = {0: 2, 1: 3}
    saved = {"param_groups": [{"lr": 3e-4, "params": [0, 1]}], "state": {0: {"exp_avg": torch.ones(5, 2)}}}
    stacked = replicas._stacked_optimizer([None, None], 0, saved)
    assert stacked == {"param_groups": saved["param_groups"], "state": {}}


def test_replicas_split_over_two_processes(tmp_path, config_path):
    """--trainer.devices 2 gives process 0 replicas 0-1 and process 1 replica 2; no gradient is shared, each
    process resumes its own share, and every replica ends where one process training all three ends."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config_path("quickstart.yaml"),
        *TINY,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "split"),
        "--replicas",
        "3",
        "--seed_everything",
        "4",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
    ]
    done = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "process 0: 2 of 2 replicas completed" in done.stdout and "process 1: 1 of 1 replicas completed" in done.stdout
    )
    assert "3 of 3 replicas completed, 0 diverged" in done.stdout
    (run,) = run_dirs(tmp_path / "split")
    done = subprocess.run(
        base + ["--trainer.max_steps", "9", "--ckpt_path", run], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fit(
        config_path("quickstart.yaml"),
        tmp_path / "one",
        "--replicas",
        "3",
        "--seed_everything",
        "4",
        "--trainer.max_steps",
        "9",
    )
    split, one = (replica_checkpoints(r, 3) for r in (run, run_dirs(tmp_path / "one")[0]))
    for k in range(3):
        # Each process keeps its own replicas' best checkpoints across the resume, as one process does.
        listing = lambda r: sorted(os.listdir(os.path.join(r, f"replica_{k}", "checkpoints")))
        assert listing(run) == listing(run_dirs(tmp_path / "one")[0]) and len(listing(run)) == 2, k
        # Every process validates its replicas on every validation image: the same val/elbo as one process.
        val = lambda r: {e.step: e.value for e in tags(os.path.join(r, f"replica_{k}")).Scalars("val/elbo")}
        split_val, one_val = val(run), val(run_dirs(tmp_path / "one")[0])
        assert sorted(split_val) == sorted(one_val) == [2, 5, 8], (k, split_val)  # a single run's indices
        for step, value in one_val.items():
            assert abs(split_val[step] - value) < 1e-3 * abs(value), (k, step, split_val[step], value)
        assert split[k]["global_step"] == 9 and split[k]["datamodule_hyper_parameters"]["seed"] == 4 + k
        for name, value in one[k]["state_dict"].items():  # vmap over 2 or 3 replicas: float rounding apart
            torch.testing.assert_close(split[k]["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=f"{k} {name}")


def test_a_nan_in_one_replica_freezes_only_that_replica():
    torch.manual_seed(0)
    replicas = ReplicaSet(VAE(**SMALL), [0, 1, 2])
    dm = tiny_data()
    seeds = torch.tensor(replicas.seeds)
    optimizer = replicas.configure_optimizers()
    engine = Engine(
        replicas,
        [optimizer],
        lambda s: dm.training_batch(seeds, 0, s, "cpu"),
        seed=seeds,
        rank=0,
        mode="eager",
        start_step=0,
        device=torch.device("cpu"),
        max_loss=1e6,
        replicas=3,
    )
    engine.step()
    poison = torch.ones(3)
    real = replicas.loss_pieces  # on the CPU the engine runs the replicas one piece each
    poisoned = lambda piece, k: lambda: (lambda t: {**t, "loss": t["loss"] * poison[k]})(piece())
    replicas.loss_pieces = lambda x, **r: [poisoned(piece, k) for k, piece in enumerate(real(x, **r))]
    before = {k: v.clone() for k, v in replicas.stacked.items()}
    poison[1] = float("nan")
    engine.step()
    poison[1] = 1.0
    engine.step()
    assert engine.bad_step.tolist() == [-1, 1, -1]
    for name, now in replicas.stacked.items():
        assert torch.equal(now[1], before[name][1]), name  # frozen at its last good step
        assert torch.isfinite(now).all()
    assert all(
        not torch.equal(now[k], before[n][k])
        for n, now in replicas.stacked.items()
        for k in (0, 2)
        if now.ndim > 1 and now.shape[-1] > 1
    )


def test_replicas_drawing_steps_in_blocks_train_exactly_as_one_step_at_a_time():
    """The CPU default for a replica set: the inputs of a block of steps for every seed at once."""
    dm = tiny_data()
    sets = [ReplicaSet(VAE(**SMALL), [0, 1, 2]) for _ in range(2)]
    seeds = torch.tensor([0, 1, 2])
    engines = [
        Engine(
            rs,
            [rs.configure_optimizers()],
            lambda s: dm.training_batch(seeds, 0, s, "cpu"),
            seed=seeds,
            rank=0,
            mode="eager",
            start_step=1,
            device=torch.device("cpu"),
            max_loss=1e6,
            replicas=3,
            draw_ahead=ahead,
        )
        for rs, ahead in zip(sets, (1, 2))
    ]
    for _ in range(4):  # steps 1 to 4, across three blocks
        a, b = (engine.step() for engine in engines)
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert all(torch.equal(sets[0].stacked[n], sets[1].stacked[n]) for n in sets[0].stacked)


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
    engine = Engine(
        replicas,
        list(replicas.configure_optimizers()),
        lambda s: dm.training_batch(seeds, 0, s, "cpu"),
        seed=seeds,
        rank=0,
        mode="eager",
        start_step=0,
        device=torch.device("cpu"),
        max_loss=1e6,
        replicas=2,
    )
    for _ in range(3):
        engine.step()
    for k, single in enumerate(singles):
        mine = replicas.replica_state_dict(k)
        assert any(n.startswith("discriminator.") for n in mine)
        for name, value in single.items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=f"replica {k}: {name}")
    start = ReplicaSet(FactorVAE(**options), [0, 1])  # the discriminators moved away from their initial weights
    assert all(
        not torch.equal(replicas.stacked[n], start.stacked[n])
        for n in replicas.stacked
        if n.startswith("discriminator")
    )


def test_vmapped_and_looped_replicas_compute_the_same_step():
    """Accelerators run the replicas as one vmap, the CPU as a loop; both are the same program."""
    dm = tiny_data()
    seeds = torch.tensor([0, 1, 2])
    x = dm.training_batch(seeds, 0, torch.tensor(0), "cpu")
    results = []
    for vectorize in (True, False):
        replicas = ReplicaSet(VAE(**SMALL), [0, 1, 2], vectorize=vectorize)
        noise = replicas.step_randomness(x.shape[0], lambda p: keyed.stream(p, seeds, 0, torch.tensor(0)))
        terms = replicas.loss_terms(x, **noise)
        terms["loss"].sum().backward()
        results.append((terms, {n: p.grad.clone() for n, p in replicas.stacked.items()}))
    (vmapped, vgrads), (looped, lgrads) = results
    for name in vmapped:
        assert vmapped[name].shape == (3,)
        torch.testing.assert_close(looped[name], vmapped[name], rtol=1e-5, atol=1e-5, msg=name)
    for name in vgrads:
        torch.testing.assert_close(lgrads[name], vgrads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(vmapped["loss"][0], vmapped["loss"][1])  # three models, three losses


def engine_replicas_against_single_runs(device: torch.device, mode: str, steps: int, vectorize: bool | None = None):
    """Replica k of a set trained ``steps`` engine steps, beside the single run of seed k: (replica
    weights, single weights, replica last terms, single last terms) per k."""
    dm = tiny_data()
    singles = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = VAE(**SMALL).to(device)
        engine = Engine(
            model,
            [model.configure_optimizers()],
            lambda s, seed=seed: dm.training_batch(seed, 0, s, device),
            seed=seed,
            rank=0,
            mode=mode,
            start_step=0,
            device=device,
        )
        terms = [engine.step() for _ in range(steps)][-1]
        singles.append((model.state_dict(), {n: v.clone() for n, v in terms.items()}))
    replicas = ReplicaSet(VAE(**SMALL), [0, 1, 2], vectorize=vectorize).to(device)
    seeds = torch.tensor(replicas.seeds, device=device)
    engine = Engine(
        replicas,
        [replicas.configure_optimizers()],
        lambda s: dm.training_batch(seeds, 0, s, device),
        seed=seeds,
        rank=0,
        mode=mode,
        start_step=0,
        device=device,
        max_loss=replicas.model_hparams["max_loss"],
        replicas=3,
    )
    terms = [engine.step() for _ in range(steps)][-1]
    if mode == "graph":
        assert engine._graph is not None  # the later steps were replays
    return [
        (replicas.replica_state_dict(k), single, {n: v[k] for n, v in terms.items()}, single_terms)
        for k, (single, single_terms) in enumerate(singles)
    ]


def test_vmapped_replicas_through_the_engine_equal_single_runs():
    """The accelerator program (one vmap over the replicas, the engine's guarded update) on the CPU: replica k
    is still the single run of seed k after 5 steps."""
    for mine, single, my_terms, single_terms in engine_replicas_against_single_runs(
        torch.device("cpu"), "eager", 5, True
    ):
        for name, value in single.items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=name)
        for name, value in single_terms.items():
            torch.testing.assert_close(my_terms[name], value, rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_replicas_equal_graphed_single_runs_on_gpu():
    """On CUDA the replicas run as one vmap inside one CUDA graph. After 10 steps (3 eager warm-up steps, the
    capture, replays) replica k is the single graphed run of seed k. Stated tolerance: 1e-3 absolute on
    the weights (TF32 off; batched and single kernels round differently, and Adam's first steps move a
    weight by about lr = 3e-4 whatever the size of its gradient), 1e-3 relative on the last losses."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = engine_replicas_against_single_runs(torch.device("cuda"), "graph", 10)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for mine, single, my_terms, single_terms in results:
        for name, value in single.items():
            torch.testing.assert_close(mine[name], value, rtol=0, atol=1e-3, msg=name)
        for name, value in single_terms.items():
            torch.testing.assert_close(my_terms[name], value, rtol=1e-3, atol=1e-3, msg=name)


def test_replicas_refuse_what_scores_one_model(config_path):
    """--replicas with a callback that scores the single model, or a best checkpoint by another key, fails at
    the start with the way out, not in the middle of training."""
    from sbvae.cli.train import build_cli
    from sbvae.errors import SBVAEError

    base = ["--config", config_path("quickstart.yaml"), *TINY, "--replicas", "2"]
    cli = build_cli([*base, "--trainer.callbacks+=sbvae.callbacks.MetricsCallback"], run=False)
    with pytest.raises(SBVAEError, match="drop it and score every replica afterwards with sbvae-eval"):
        cli.before_fit()
    for bad in (["--checkpoint.monitor", "val/kl"], ["--checkpoint.save_top_k", "3"]):
        cli = build_cli([*base, *bad], run=False)
        with pytest.raises(SBVAEError, match="keeps its one best checkpoint by val/elbo .lowest., not"):
            cli.before_fit()
    cli = build_cli([*base, "--checkpoint.save_last", "true"], run=False)
    with pytest.raises(SBVAEError, match="drop checkpoint.save_last"):
        cli.before_fit()
    cli = build_cli([*base, "--checkpoint.monitor", "val/kl", "--checkpoint.save_top_k", "0"], run=False)
    cli.before_fit()  # no best checkpoint kept: nothing to disagree about
    assert type(cli.model).__name__ == "ReplicaSet"


def test_every_replica_diverging_stops_the_run_with_the_way_on(tmp_path, config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(
            config_path("quickstart.yaml"),
            tmp_path,
            "--replicas",
            "2",
            "--model.init_args.max_loss",
            "1.0",
            "--trainer.log_every_n_steps",
            "2",
            "--trainer.max_steps",
            "20",
            "--data.steps_per_epoch",
            "10",
        )
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "every replica diverged (first at step 0" in err and "replica_K/checkpoints/last.ckpt" in err
    (run,) = run_dirs(tmp_path)
    records = [json.load(open(os.path.join(run, f"replica_{k}", "status.json"))) for k in range(2)]
    assert [(r["status"], r["step"]) for r in records] == [("diverged", 0), ("diverged", 0)]
    assert json.load(open(os.path.join(run, "status.json")))["global_step"] == 2  # stopped at the first logging step


def test_running_replicas_get_a_heartbeat_and_keep_their_final_status(tmp_path):
    """Like a single run's status.json, a running replica's is refreshed (else sweeps read a live replica run as
    interrupted after five minutes); a final status is never overwritten by the heartbeat."""
    import time
    import types

    from sbvae.replicas import ReplicaOutputs

    outputs = ReplicaOutputs(heartbeat_seconds=0.02)
    trainer, module = types.SimpleNamespace(global_step=7), types.SimpleNamespace(seeds=[10, 11])
    outputs.log_dir, outputs.replica_ids, outputs.started = str(tmp_path), [3, 4], time.time()
    outputs._trainer, outputs._module = trainer, module
    for k in (0, 1):
        outputs._status(trainer, module, k, "running")
    outputs._status(trainer, module, 1, "completed")
    read = lambda r: json.load(open(tmp_path / f"replica_{r}" / "status.json"))
    first, done = read(3)["heartbeat"], read(4)
    outputs._heartbeat.start(outputs._beat, "test-heartbeat")
    trainer.global_step = 9
    time.sleep(0.3)
    outputs._heartbeat.stop()
    assert read(3)["status"] == "running" and read(3)["heartbeat"] > first and read(3)["global_step"] == 9
    assert read(3)["seed"] == 10
    assert read(4) == done  # completed: untouched


def test_a_resume_in_the_wrong_mode_is_refused_before_the_run_is_touched(tmp_path, config_path, capsys):
    """Resuming a replica run without --replicas (or a single run with it, or with another count) stops with
    the flag to use, and leaves the completed run's status, config and TensorBoard events as they were."""
    fit(config_path("quickstart.yaml"), tmp_path / "set", "--replicas", "2")
    fit(config_path("quickstart.yaml"), tmp_path / "one")
    (replica_run,), (single_run,) = run_dirs(tmp_path / "set"), run_dirs(tmp_path / "one")
    listing = lambda run: {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(run) for f in files
    }
    before = {run: listing(run) for run in (replica_run, single_run)}
    for out, extra, says in (
        ("set", ["--ckpt_path", replica_run], "is a replica-parallel run of 2 replicas: resume it with --replicas 2"),
        ("set", ["--ckpt_path", replica_run, "--replicas", "3"], "resume it with --replicas 2"),
        (
            "one",
            ["--ckpt_path", single_run, "--replicas", "2"],
            "is a single run's checkpoint: resume it without --replicas",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            fit(config_path("quickstart.yaml"), tmp_path / out, "--trainer.max_steps", "9", *extra)
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err
    assert {run: listing(run) for run in (replica_run, single_run)} == before


@pytest.mark.parametrize("fail", ["capture", "wrong"])
def test_the_vmapped_replica_program_falls_back_to_eager_steps_like_a_single_run(monkeypatch, fail):
    """step_mode auto on the replica program (simulated graph on the CPU): a failed capture or a wrong first
    replay goes on eagerly from the same step, and every replica ends where the eager replica run does."""
    import sbvae.engine as engine_module
    from test_engine import StandInGraph

    dm = tiny_data()

    def run(mode):
        torch.manual_seed(0)
        replicas = ReplicaSet(VAE(**SMALL), [0, 1, 2], vectorize=True)
        monkeypatch.setattr(engine_module, "graph_runner", lambda: StandInGraph(fail, replicas))
        seeds = torch.tensor(replicas.seeds)
        engine = Engine(
            replicas,
            [replicas.configure_optimizers()],
            lambda s: dm.training_batch(seeds, 0, s, "cpu"),
            seed=seeds,
            rank=0,
            mode=mode,
            start_step=0,
            device=torch.device("cpu"),
            max_loss=replicas.model_hparams["max_loss"],
            replicas=3,
            fallback=True,
        )
        losses = [engine.step()["loss"].clone() for _ in range(6)]
        return engine, losses, [replicas.replica_state_dict(k) for k in range(3)]

    with pytest.warns(UserWarning, match="step_mode auto: the CUDA graph step"):
        graphed, graphed_losses, graphed_weights = run("graph")
    eager, eager_losses, eager_weights = run("eager")
    assert graphed.mode == "eager" and graphed.fallback.endswith("at step 3")
    assert all(torch.equal(a, b) for a, b in zip(graphed_losses, eager_losses))
    for mine, theirs in zip(graphed_weights, eager_weights):
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)


def test_a_replica_continued_as_a_single_run_keeps_its_seed(tmp_path, config_path, capsys):
    """Every checkpoint records its run's seeds. Replica 1 of a --seed_everything 4 set, continued alone under
    the config's seed_everything 0, still draws seed 5's streams, so it ends where the single run of seed 5
    ends; a command-line seed that contradicts its checkpoint is refused before anything is written."""
    fit(config_path("quickstart.yaml"), tmp_path / "set", "--replicas", "2", "--seed_everything", "4")
    (run,) = run_dirs(tmp_path / "set")
    replica = os.path.join(run, "replica_1", "checkpoints", "last.ckpt")
    load = lambda path: torch.load(path, map_location="cpu", weights_only=True)
    assert load(os.path.join(run, "checkpoints", "last.ckpt"))["sbvae_seeds"] == {"seed_everything": 4, "data": 4}
    assert load(replica)["sbvae_seeds"] == {"seed_everything": 5, "data": 5}
    for flag in ("--seed_everything", "--data.seed"):
        with pytest.raises(SystemExit) as exit_info:
            fit(
                config_path("quickstart.yaml"),
                tmp_path / "set",
                "--ckpt_path",
                replica,
                flag,
                "0",
                "--trainer.max_steps",
                "9",
            )
        assert exit_info.value.code == 2
        assert f"--ckpt_path {replica} continues a run trained with {flag} 5: drop {flag} 0" in capsys.readouterr().err
    assert load(replica)["global_step"] == 6

    fit(config_path("quickstart.yaml"), tmp_path / "set", "--ckpt_path", replica, "--trainer.max_steps", "9")
    fit(config_path("quickstart.yaml"), tmp_path / "single", "--seed_everything", "5", "--trainer.max_steps", "9")
    (single,) = run_dirs(tmp_path / "single")
    continued, alone = load(replica), load(os.path.join(single, "checkpoints", "last.ckpt"))
    assert continued["global_step"] == 9 and continued["sbvae_seeds"] == alone["sbvae_seeds"] == {
        "seed_everything": 5,
        "data": 5,
    }
    for name, value in alone["state_dict"].items():
        torch.testing.assert_close(continued["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_the_set_takes_the_training_step_when_its_model_does():
    class StepVAE(VAE):
        uses_step = True

    assert ReplicaSet(VAE(**SMALL), [0, 1]).uses_step is False
    assert ReplicaSet(StepVAE(**SMALL), [0, 1]).uses_step is True
