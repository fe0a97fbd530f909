"""End-to-end training through the sbvae-train CLI on tiny data (CPU, seconds)."""

import copy
import glob
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import model_checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run_probes
from sbvae.cli.train import main
from sbvae.evaluation import scalars, score
from sbvae.loading import model_from_checkpoint
from sbvae.module import VAE

TINY = [
    "--trainer.max_steps",
    "6",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--data.image_size",
    "16",
    "--data.batch_size",
    "8",
    "--data.steps_per_epoch",
    "3",
    "--data.val_size",
    "16",
    "--images.every_n_steps",
    "3",
    "--images.order_images",
    "16",
]


def fit(config, out, *extra):
    main(["fit", "--config", config, *TINY, "--trainer.logger.init_args.save_dir", str(out), *extra])


def run_dirs(out, name="quickstart"):
    return sorted(glob.glob(os.path.join(out, name, "version_*")))


def tags(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_quickstart_trains_end_to_end(tmp_path, config_path):
    fit(config_path("quickstart.yaml"), tmp_path)
    (run,) = run_dirs(tmp_path)
    ckpts = os.listdir(os.path.join(run, "checkpoints"))
    assert "last.ckpt" in ckpts and any(c.startswith("best-") for c in ckpts)
    assert json.load(open(os.path.join(run, "status.json")))["status"] == "completed"
    events = tags(run)
    images = events.Tags()["images"]
    assert "reconstructions" in images and "traversals/seed_0" in images
    scalars = events.Tags()["scalars"]
    for name in ("train/loss", "train/nll", "train/kl", "val/elbo", "val/latents_used"):
        assert name in scalars, scalars
    first, last = events.Scalars("train/loss")[0], events.Scalars("train/loss")[-1]
    assert last.value < first.value  # 6 steps at lr 1e-3 already lower the Bernoulli NLL

    # Evaluation rebuilds model and data from the checkpoint alone.
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["datamodule_hyper_parameters"]["dataset"] == "colored-sprites"
    model = VAE.load_from_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu")
    assert model.hparams.image_size == 16 and model.hparams.channels == 3


def same_tensors(a, b) -> bool:
    """Equal nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_tensors, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize(
    "config, name", [("quickstart.yaml", "quickstart"), ("quickstart-factorvae.yaml", "quickstart-factorvae")]
)
def test_resume_restores_the_saved_state_in_the_same_run_folder(tmp_path, config_path, config, name):
    fit(config_path(config), tmp_path)
    (run,) = run_dirs(tmp_path, name)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    first_start = json.load(open(os.path.join(run, "status.json")))["started"]
    run_probes.SEEN.clear()
    fit(
        config_path(config),
        tmp_path,
        "--trainer.max_steps",
        "9",
        "--ckpt_path",
        last,
        "--trainer.callbacks+=run_probes.RestoredState",
    )
    (restored,) = run_probes.SEEN
    assert same_tensors(restored["state_dict"], saved["state_dict"])
    assert same_tensors(restored["optimizer_states"], saved["optimizer_states"])  # Adam's moments and step counts
    assert run_dirs(tmp_path, name) == [run]  # no version_1: one run, one folder
    # One curve, both halves, at the uninterrupted run's indices (step s at s - 1): the checkpoint at step 6
    # ends an epoch, where Lightning alone would resume the index one ahead.
    assert [e.step for e in tags(run).Scalars("train/loss")] == list(range(9))
    assert [e.step for e in tags(run).Scalars("val/elbo")] == [2, 5, 8]
    # The checkpoint's own pictures (step 6) stay: only what a killed process logged after it is dropped.
    assert [e.step for e in tags(run).Images("reconstructions")] == [3, 6, 9]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 9
    status = json.load(open(os.path.join(run, "status.json")))
    assert status["status"] == "completed" and status["global_step"] == 9 and status["started"] > first_start


def as_a_gpu_run_saved_it(ckpt: dict) -> dict:
    """A CPU checkpoint's Adam states as a CUDA run writes them: capturable, not fused."""
    for state in ckpt["optimizer_states"]:
        for group in state["param_groups"]:
            group.update(capturable=True, fused=None)
    return ckpt


@pytest.mark.parametrize(
    "config, name", [("quickstart.yaml", "quickstart"), ("quickstart-factorvae.yaml", "quickstart-factorvae")]
)
def test_a_resume_trains_with_the_command_lines_lr_and_this_devices_adam(tmp_path, config_path, config, name):
    """Lightning's restore brings back the saved lr and the saving device's Adam flags; the config and this device win."""
    fit(config_path(config), tmp_path)
    (run,) = run_dirs(tmp_path, name)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    saved = as_a_gpu_run_saved_it(torch.load(last, map_location="cpu", weights_only=False))
    torch.save(saved, last)
    run_probes.SEEN.clear()
    fit(
        config_path(config),
        tmp_path,
        "--trainer.max_steps",
        "7",
        "--ckpt_path",
        last,
        "--model.init_args.lr",
        "1e-05",
        "--trainer.callbacks+=run_probes.OptimizerSettings",
    )
    (seen,) = run_probes.SEEN
    vae_group = seen["groups"][0][0]
    assert vae_group["lr"] == 1e-05 and vae_group["capturable"] is False and vae_group["fused"] is True
    assert all(step.device.type == "cpu" and step.dtype == torch.float32 and float(step) == 6 for step in seen["steps"])
    if len(seen["groups"]) > 1:  # FactorVAE's discriminator keeps its own lr from the config
        assert seen["groups"][1][0]["lr"] == saved["optimizer_states"][1]["param_groups"][0]["lr"]
    # The one step at 1e-5 moved the weights by about 1e-5 (at the saved 1e-3, by about 1e-3).
    after = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    moved = max((after[k] - v).abs().max().item() for k, v in saved["state_dict"].items() if k.startswith("encoder."))
    assert 0 < moved < 1e-4
    assert json.load(open(os.path.join(run, "status.json")))["status"] == "completed"


@pytest.mark.parametrize(
    "config, name", [("quickstart.yaml", "quickstart"), ("quickstart-factorvae.yaml", "quickstart-factorvae")]
)
def test_divergence_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, config_path, capsys, config, name):
    fit(config_path(config), tmp_path)
    (run,) = run_dirs(tmp_path, name)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    before = open(last, "rb").read()
    # A threshold below any real loss makes the resumed run diverge on its first step (6).  The host only looks
    # every 100 steps, but a time-based checkpoint is due after every step: that write must notice and refuse.
    with pytest.raises(SystemExit) as exit_info:
        fit(
            config_path(config),
            tmp_path,
            "--trainer.max_steps",
            "9",
            "--ckpt_path",
            last,
            "--model.init_args.max_loss",
            "1.0",
            "--trainer.log_every_n_steps",
            "100",
            "--last_checkpoint.every_n_minutes",
            "1e-9",
        )
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "diverged at step 6" in err and "last good checkpoint" in err
    assert "--model.init_args.likelihood gaussian" in err  # a key sbvae-train accepts, as typed
    assert run_dirs(tmp_path, name) == [run]  # the resumed run is the same run, in the same folder
    assert open(last, "rb").read() == before
    status = json.load(open(os.path.join(run, "status.json")))
    assert status["status"] == "diverged" and status["step"] == 6


def test_a_resume_past_max_steps_is_refused(tmp_path, config_path, capsys):
    fit(config_path("quickstart.yaml"), tmp_path)
    (run,) = run_dirs(tmp_path)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--ckpt_path", last, "--trainer.max_steps", "4")
    assert exit_info.value.code == 2
    assert "is at step 6, past --trainer.max_steps 4: nothing would train" in capsys.readouterr().err
    fit(config_path("quickstart.yaml"), tmp_path, "--ckpt_path", last)  # at its own max_steps: done, no error
    assert run_dirs(tmp_path) == [run]


def test_divergence_before_any_checkpoint_says_there_is_none(tmp_path, config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--model.init_args.max_loss", "1.0")
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "diverged at step 0" in err and "no checkpoint was written before it: train again" in err
    assert "last good checkpoint" not in err
    (run,) = run_dirs(tmp_path)
    assert not os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.bogus", "1"], "bogus"),
        (["--model.init_args.decoder", "deconv", "--data.image_size", "24"], "image"),
        (["--model.init_args.decoder_options", "{channels: [8, 8], colour: red}"], "unknown decoder option"),
        (["--data.dataset", "no-such-data"], "no-such-data"),
        (["--trainer.max_step", "3"], "unrecognized arguments: --trainer.max_step"),  # no key read from a prefix
        (["--trainer.max_steps", "-5"], "--trainer.max_steps -5 trains nothing"),
        (["--trainer.max_steps", "0"], "--trainer.max_steps 0 trains nothing"),
        (["--model.init_args.latent_dim", "0"], "latent_dim must be at least 1"),
        (["--model.init_args.lr", "-1"], "model.init_args: got lr -1"),
        (["--data.image_size", "5"], "colored-sprites: option image_size must be an integer >= 8, got 5"),
        (["--images.num_images", "0"], "num_images, steps and order_images must be at least 1"),
        (["--data.dataset_options", "{image_size: 64}"], "image_size is data.image_size, not a dataset option"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, config_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, *override)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_mistakes_outside_the_config_give_one_clear_error(tmp_path, config_path, capsys):
    """A save_dir through a file, a GPU that is not there, validate with no checkpoint, predict: one sentence each."""
    config = config_path("quickstart.yaml")
    (tmp_path / "a.ckpt").write_bytes(b"")
    cases = [
        (
            ["fit", "--config", config, "--trainer.logger.init_args.save_dir", str(tmp_path / "a.ckpt" / "runs")],
            "cannot write the run's folder in",
        ),
        (
            ["validate", "--config", config, "--trainer.logger.init_args.save_dir", str(tmp_path)],
            "validate without --ckpt_path would score the config's untrained weights",
        ),
        (["predict", "--config", config], "invalid choice: 'predict'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["fit", "--config", config, "--trainer.accelerator", "gpu"], "torch sees no CUDA GPU"))
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err, (args, err)
    assert not os.path.isdir(tmp_path / "quickstart")  # the refused validate made no version folder


def test_bf16_mixed_precision_and_metrics_callback(tmp_path, config_path):
    # mig and elbo: after 6 steps every code dimension is below FactorVAE's pruning threshold, so its score is 0.
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.callbacks+=sbvae.callbacks.MetricsCallback",
        "--trainer.callbacks.every_n_steps=3",
        "--trainer.callbacks.metrics=[mig, elbo]",
    )
    (run,) = run_dirs(tmp_path)
    events = tags(run)
    for name in ("metrics/mig", "metrics/elbo"):
        assert [e.step for e in events.Scalars(name)] == [3, 6]  # every 3 steps; the end of fit is not scored twice
    assert [e.step for e in events.Images("reconstructions")] == [3, 6]
    assert all(torch.isfinite(torch.tensor(e.value)) for e in events.Scalars("train/loss"))
    # The last scores are those sbvae-eval gives the saved weights at the callback's preset and seed.
    model, dm, _ = model_from_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"), torch.device("cpu"))
    expected = scalars(score(model, dm.data, ["mig", "elbo"], "quick", seed=0))
    for name in ("mig", "elbo", "elbo/kl", "mig/posX"):
        assert events.Scalars(f"metrics/{name}")[-1].value == pytest.approx(expected[name], rel=1e-6), name


def fit_ddp(config, out, *extra):
    """sbvae-train fit on two CPU processes (a subprocess: DDP spawns its workers from a fresh interpreter)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config,
        *TINY,
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart-factorvae.yaml"])
def test_ddp_two_processes_keep_replicas_identical(tmp_path, config_path, config):
    done = fit_ddp(
        config_path(config),
        tmp_path,
        "--trainer.callbacks+=ddp_probe.ReplicaDigest",
        f"--trainer.callbacks.out_dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [open(tmp_path / f"digest_rank{r}.txt").read().split() for r in (0, 1)]
    assert digests[0] == digests[1]  # same weights, same step, world size 2
    assert digests[0][1:] == ["6", "2"]


def test_ddp_stops_every_process_when_one_diverges(tmp_path, config_path):
    # Only process 1's loss exceeds max_loss at step 2 (its gradients stay finite): every process must stop there.
    done = fit_ddp(config_path("quickstart.yaml"), tmp_path, "--model.class_path", "ddp_probe.LossSpikeOnRank")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "diverged at step 2 (loss = " in done.stderr


def final_weights(run):
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def test_same_seed_same_run_other_seed_other_run(tmp_path, config_path):
    for seed in ("0", "0", "1"):  # data.seed follows seed_everything
        fit(config_path("quickstart.yaml"), tmp_path, "--seed_everything", seed)
    a, b, c = (final_weights(r) for r in run_dirs(tmp_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_quickstart_learns(tmp_path, config_path):
    """The full quickstart (500 steps, ~1 minute): the ELBO falls well below its start and latents get used."""
    main(
        [
            "fit",
            "--config",
            config_path("quickstart.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    events = tags(run_dirs(tmp_path)[0])
    elbo = [e.value for e in events.Scalars("val/elbo")]
    assert elbo[-1] < 0.7 * elbo[0]
    assert events.Scalars("val/latents_used")[-1].value >= 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trains_graphed_on_gpu(tmp_path, config_path, precision):
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        precision,
        "--data.image_size",
        "64",
        "--trainer.max_steps",
        "12",
    )
    (run,) = run_dirs(tmp_path)
    status = json.load(open(os.path.join(run, "status.json")))
    # auto completes eagerly when a capture fails: the graph itself must have run.
    assert status["status"] == "completed" and status["step_mode"] == "graph", status
    assert "graph_fallback" not in status, status["graph_fallback"]


def test_last_checkpoint_is_the_final_step_even_mid_epoch(tmp_path, config_path):
    # 7 steps with 3-step epochs: the run ends inside an epoch, after validations that may not improve.
    fit(config_path("quickstart.yaml"), tmp_path, "--trainer.max_steps", "7")
    (run,) = run_dirs(tmp_path)
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 7
    assert not [f for f in os.listdir(os.path.join(run, "checkpoints")) if f.endswith(".partial")]


def test_missing_resume_checkpoint_is_one_sentence(tmp_path, config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope.ckpt does not exist" in err and "Traceback" not in err


def test_losses_stay_float32_under_bf16_autocast():
    model = VAE(image_size=16, channels=3, encoder_options={"channels": [8] * 4}, decoder_options={"channels": [8, 8]})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll, kl, z, logvar = model.per_image_terms(torch.rand(4, 3, 16, 16), torch.randn(4, 10))
    assert nll.dtype == kl.dtype == z.dtype == torch.float32


def test_evaluation_noise_depends_on_the_row_only():
    model = VAE(image_size=16, channels=3, encoder_options={"channels": [8] * 4}, decoder_options={"channels": [8, 8]})
    rows = torch.arange(10)
    torch.manual_seed(0)
    a = model.evaluation_noise(rows)
    torch.manual_seed(1)
    b = torch.cat([model.evaluation_noise(rows[:3]), model.evaluation_noise(rows[3:])])
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_each_process_draws_its_own_step_noise():
    """Same weights and images on ranks 0 and 1: only the rank-keyed noise (posterior, permutation) differs."""
    from sbvae.engine import Engine
    from sbvae.factorvae import FactorVAE

    torch.manual_seed(0)
    base = FactorVAE(
        image_size=16,
        channels=3,
        encoder_options={"channels": [8] * 4, "hidden": 32},
        decoder_options={"channels": [8, 8]},
        disc_hidden=16,
        disc_layers=2,
    )
    images = torch.rand(8, 3, 16, 16)
    terms = []
    for rank in (0, 1, 0):
        model = copy.deepcopy(base)
        engine = Engine(
            model,
            list(model.configure_optimizers()),
            lambda step: images,
            seed=5,
            rank=rank,
            mode="eager",
            start_step=0,
            device=torch.device("cpu"),
        )
        terms.append({k: float(v) for k, v in engine.step().items()})
    assert terms[0] == terms[2]
    assert terms[0]["nll"] != terms[1]["nll"] and terms[0]["disc_loss"] != terms[1]["disc_loss"]


def test_a_resume_with_another_architecture_stops_before_touching_the_run(tmp_path, config_path, capsys):
    """A config that builds another model (here 32 px images) fails in one sentence; the finished run it
    names keeps its status, config and events."""
    fit(config_path("quickstart.yaml"), tmp_path)
    (run,) = run_dirs(tmp_path)
    before = {name: open(os.path.join(run, name), "rb").read() for name in ("status.json", "config.yaml")}
    events = sorted(glob.glob(os.path.join(run, "events.out.tfevents.*")))
    last = os.path.join(run, "checkpoints", "last.ckpt")
    with pytest.raises(SystemExit) as stopped:
        fit(config_path("quickstart.yaml"), tmp_path, "--data.image_size", "32", "--ckpt_path", last)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "holds weights of another model than this config builds (size mismatch for" in err
    assert f"sbvae-train fit --config {os.path.join(run, 'config.yaml')} --ckpt_path {last}" in err
    assert {name: open(os.path.join(run, name), "rb").read() for name in before} == before
    assert sorted(glob.glob(os.path.join(run, "events.out.tfevents.*"))) == events


def test_a_resume_from_a_relative_folder_keeps_one_best_checkpoint(tmp_path, config_path, monkeypatch):
    """Lightning reloads the best checkpoints it tracks only when the folder is spelled as it recorded it
    (relative here); otherwise a resumed run keeps a second best-step=N.ckpt, whatever its score."""
    monkeypatch.chdir(tmp_path)
    fit(config_path("quickstart.yaml"), "runs")
    (run,) = run_dirs("runs")
    assert not os.path.isabs(run)
    model_checkpoint.warning_cache.clear()  # Lightning warns once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(config_path("quickstart.yaml"), "runs", "--trainer.max_steps", "12", "--ckpt_path", run)
    best = [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith("best-")]
    assert len(best) == 1, best
    assert run_dirs("runs") == [run]  # the same run, continued
    # the resumed epoch ends before any validation: no look for val/elbo there, and no warning it is missing
    assert not [w for w in caught if "monitored key" in str(w.message)]


def test_training_without_validation_says_no_best_checkpoint_is_kept(tmp_path, config_path):
    with pytest.warns(UserWarning, match="limit_val_batches 0 runs no validation, so no best checkpoint"):
        fit(config_path("quickstart.yaml"), tmp_path, "--trainer.limit_val_batches", "0")
    (run,) = run_dirs(tmp_path)
    assert os.listdir(os.path.join(run, "checkpoints")) == ["last.ckpt"]
