"""sbvae-eval on a tiny checkpoint: JSON, determinism, TensorBoard scalars and clear errors."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import sklearn
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sbvae
from sbvae import metrics as M
from sbvae.cli.evaluate import main as evaluate
from sbvae.cli.evaluate import table
from sbvae.cli.train import build_cli
from sbvae.evaluation import scalars, score
from sbvae.loading import model_from_checkpoint
from test_training import fit, run_dirs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "quickstart.yaml"), out)
    return os.path.join(run_dirs(out)[0], "checkpoints", "last.ckpt")


def test_eval_writes_json_and_is_deterministic(checkpoint, tmp_path, capsys):
    outputs = []
    for i in range(2):
        out = tmp_path / f"res{i}.json"
        evaluate(
            [
                "--ckpt",
                checkpoint,
                "--metrics",
                "elbo,mig,factor_vae",
                "--preset",
                "quick",
                "--seed",
                "3",
                "--device",
                "cpu",
                "--output",
                str(out),
            ]
        )
        outputs.append(json.load(open(out)))
    captured = capsys.readouterr()
    printed = captured.out
    assert "mig" in printed and "factor_vae" in printed
    # One progress bar per metric on stderr, ending exactly at the images the metric encodes (this untrained
    # model's codes are all collapsed, so factor_vae stops after its variance estimate, short of its votes).
    for bar in ("elbo        : 100%", "1.00k/1.00k", "mig         : 100%", "2.00k/2.00k", "factor_vae  :", "/15.4k"):
        assert bar in captured.err
    assert "%|" not in printed and printed.splitlines()[0].split() == ["metric", "score", "details"]
    a, b = outputs
    assert a["metrics"] == b["metrics"]  # same checkpoint and seed: same numbers
    assert a["checkpoint"] == os.path.abspath(checkpoint) and a["seed"] == 3 and a["preset"] == "quick"
    assert a["dataset"]["dataset"] == "colored-sprites"
    assert a["software"] == {
        "sbvae": sbvae.__version__,
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
    mig, fvae = a["metrics"]["mig"], a["metrics"]["factor_vae"]
    assert mig["params"]["num_points"] == 2000 and fvae["params"]["num_train"] == 300
    assert len(mig["per_factor"]) == 8  # 5 dSprites factors + 3 binned colour coordinates
    elbo = a["metrics"]["elbo"]
    assert elbo["elbo"] == pytest.approx(elbo["nll"] + elbo["kl"], rel=1e-12) and elbo["num_images"] == 1000
    # The numbers are the library's for the checkpoint's weights and data at the quick sizes and seed 3.
    model, dm, _ = model_from_checkpoint(checkpoint, torch.device("cpu"))
    for name, result in score(model, dm.data, ["elbo", "mig", "factor_vae"], "quick", seed=3).items():
        assert a["metrics"][name]["score"] == result.score, name
    assert fvae["num_active_dims"] == 0 and fvae["score"] == 0.0  # collapsed codes, as the progress bar shows
    # The run's TensorBoard log got the scores.
    events = EventAccumulator(os.path.dirname(os.path.dirname(checkpoint)))
    events.Reload()
    assert {
        "eval/mig_quick",
        "eval/factor_vae_quick",
        "eval/elbo_quick",
        "eval/elbo/nll_quick",
        "eval/elbo/latents_used_quick",
        "eval/mig/shape_quick",
    } <= set(events.Tags()["scalars"])


def test_eval_other_seed_changes_the_sample(checkpoint, tmp_path):
    scores = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.json"
        evaluate(
            [
                "--ckpt",
                checkpoint,
                "--metrics",
                "mig",
                "--preset",
                "quick",
                "--seed",
                str(seed),
                "--device",
                "cpu",
                "--output",
                str(out),
                "--no-tensorboard",
            ]
        )
        scores.append(json.load(open(out))["metrics"]["mig"]["mutual_info"])
    assert scores[0] != scores[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "no/such.ckpt"], "does not exist"),
        (["--metrics", "mig,bogus"], "unknown metric"),
        (["--metrics", "dci", "--jobs", "0"], "jobs must be a positive count"),
    ],
)
def test_eval_bad_input(checkpoint, args, message, capsys):
    argv = ["--ckpt", checkpoint, "--preset", "quick", "--device", "cpu"] + args
    with pytest.raises(SystemExit) as exit_info:
        evaluate(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_jobs_fit_dci_in_parallel_with_the_same_scores(checkpoint, tmp_path):
    out = tmp_path / "dci.json"
    argv = ["--ckpt", checkpoint, "--metrics", "dci", "--preset", "quick", "--device", "cpu", "--jobs", "2"]
    evaluate([*argv, "--output", str(out), "--no-tensorboard", "--no-progress"])
    written = json.load(open(out))["metrics"]["dci"]
    model, dm, _ = model_from_checkpoint(checkpoint, torch.device("cpu"))
    serial = score(model, dm.data, ["dci"], "quick", seed=0)["dci"].as_dict()
    assert {k: written[k] for k in serial} == json.loads(json.dumps(serial))
    assert "n_jobs" not in written["params"]  # not part of the definition: the same numbers either way


def test_eval_keeps_earlier_scores_only_of_the_same_data(checkpoint, tmp_path):
    """A second sbvae-eval into the same JSON keeps the first one's metrics for the same checkpoint and data,
    and drops those scored with another --dataset-option (the file names one dataset for all its scores)."""
    out = tmp_path / "scores.json"
    argv = ["--ckpt", checkpoint, "--preset", "quick", "--device", "cpu", "--no-tensorboard", "--no-progress"]
    argv += ["--output", str(out)]
    evaluate([*argv, "--metrics", "mig"])
    evaluate([*argv, "--metrics", "irs"])
    assert set(json.load(open(out))["metrics"]) == {"mig", "irs"}
    evaluate([*argv, "--metrics", "sap", "--dataset-option", "color_bins=2"])
    written = json.load(open(out))
    assert set(written["metrics"]) == {"sap"} and written["dataset"]["dataset_options"] == {"color_bins": 2}


def test_eval_truncated_checkpoint(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(open(checkpoint, "rb").read()[:1000])
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(broken), "--device", "cpu"])
    assert "is the file complete" in capsys.readouterr().err


def test_eval_dataset_option_override(checkpoint, tmp_path, capsys):
    out = tmp_path / "bins.json"
    evaluate(
        [
            "--ckpt",
            checkpoint,
            "--metrics",
            "mig",
            "--preset",
            "quick",
            "--device",
            "cpu",
            "--no-tensorboard",
            "--dataset-option",
            "color_bins=4",
            "--output",
            str(out),
        ]
    )
    record = json.load(open(out))
    assert record["dataset"]["dataset_options"] == {"color_bins": 4}
    assert record["metrics"]["mig"]["factor_entropy"][-1] <= 1.3863 + 1e-6  # 4 colour bins: entropy <= ln 4
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", checkpoint, "--device", "cpu", "--dataset-option", "color_bins"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_every_result_lists_its_scalars_one_way():
    mig = M.MIGResult(
        score=0.25,
        per_factor=torch.tensor([0.5, 0.0]),
        mutual_info=torch.zeros(3, 2),
        factor_entropy=torch.ones(2),
        factor_names=("x", "y"),
    )
    elbo = M.ELBOResult(score=10.0, elbo=10.0, nll=7.0, kl=3.0, num_images=100, latents_used=2, mean_std=torch.ones(3))
    dci = M.DCIResult(
        score=0.4,
        disentanglement=0.4,
        completeness=0.3,
        informativeness_train=0.9,
        informativeness_test=0.8,
        importance_matrix=np.zeros((3, 2)),
    )
    assert mig.scalars() == {"score": 0.25, "x": 0.5, "y": 0.0}
    assert scalars({"mig": mig, "elbo": elbo, "dci": dci}) == {
        "mig": 0.25,
        "mig/x": 0.5,
        "mig/y": 0.0,
        "elbo": 10.0,
        "elbo/nll": 7.0,
        "elbo/kl": 3.0,
        "elbo/latents_used": 2.0,
        "dci": 0.4,
        "dci/disentanglement": 0.4,
        "dci/completeness": 0.3,
        "dci/informativeness_train": 0.9,
        "dci/informativeness_test": 0.8,
    }
    lines = table({"mig": mig, "elbo": elbo}).splitlines()
    assert lines[1].split() == ["mig", "0.2500", "x=0.5,", "y=0"]
    assert lines[2].split() == ["elbo", "10.0000", "nll=7,", "kl=3,", "latents_used=2"]


def test_eval_scores_every_replica_of_a_run_folder(checkpoint, tmp_path, capsys):
    source_run = os.path.dirname(os.path.dirname(checkpoint))
    run = tmp_path / "runs" / "replicated" / "version_0"
    for r in (0, 1):
        (run / f"replica_{r}" / "checkpoints").mkdir(parents=True)
        shutil.copy(checkpoint, run / f"replica_{r}" / "checkpoints" / "last.ckpt")
        shutil.copy(os.path.join(source_run, "status.json"), run / f"replica_{r}" / "status.json")
    quick = ["--metrics", "mig", "--preset", "quick", "--device", "cpu", "--no-progress"]
    evaluate(["--ckpt", str(run), *quick])
    evaluate(["--ckpt", checkpoint, *quick, "--output", str(tmp_path / "single.json"), "--no-tensorboard"])
    single = json.load(open(tmp_path / "single.json"))
    for r in (0, 1):
        replica = run / f"replica_{r}"
        record = json.load(open(replica / "checkpoints" / "eval-quick-seed0.json"))
        assert record["checkpoint"] == str(replica / "checkpoints" / "last.ckpt")
        assert record["metrics"] == single["metrics"]  # a replica's checkpoint is scored like any other
        events = EventAccumulator(str(replica))
        events.Reload()
        assert "eval/mig_quick" in events.Tags()["scalars"]
    assert capsys.readouterr().out.count("wrote ") == 3

    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(run), *quick, "--output", str(tmp_path / "one.json")])
    assert "holds 2 replicas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(tmp_path / "runs"), *quick])
    assert "holds no checkpoints/last.ckpt" in capsys.readouterr().err
    (run / "checkpoints").mkdir()  # the set's own checkpoint: loops and step, no model
    torch.save({"global_step": 6, "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    shutil.copy(os.path.join(source_run, "status.json"), run / "status.json")
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(run / "checkpoints" / "last.ckpt"), *quick])
    assert (
        f"is the replica set's checkpoint (the loops of a --replicas run, no model of its own): pass the run folder {run}"
        in capsys.readouterr().err
    )

    evaluate(["--ckpt", source_run, *quick, "--seed", "5", "--no-tensorboard"])  # a single run's folder: its last.ckpt
    record = json.load(open(os.path.join(source_run, "checkpoints", "eval-quick-seed5.json")))
    assert record["checkpoint"] == os.path.abspath(checkpoint)


def test_sbvae_train_test_scores_the_checkpoint_on_the_test_set(checkpoint, tmp_path):
    """`sbvae-train test` averages each image's ELBO over the whole test set, with the checkpoint's weights."""
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "quickstart.yaml")
    # 13 images in batches of 8: a mean of the batch means would weigh the last 5 images as much as the first 8.
    cli = build_cli(
        [
            "test",
            "--config",
            config,
            "--data.image_size",
            "16",
            "--data.batch_size",
            "8",
            "--data.val_size",
            "13",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--ckpt_path",
            checkpoint,
        ]
    )
    model, dm = model_from_checkpoint(checkpoint, torch.device("cpu"))[0], cli.datamodule
    factors, rows = dm.validation_factors(1), torch.arange(13, 26)  # the test set: rows after validation's
    with torch.no_grad():
        nll, kl, _, logvar = model.per_image_terms(dm.render_fixed(factors, rows), model.evaluation_noise(rows))
    logged = cli.trainer.callback_metrics
    for name, value in (("nll", nll.mean()), ("kl", kl.mean()), ("elbo", (nll + kl).mean())):
        assert float(logged[f"test/{name}"]) == pytest.approx(float(value), rel=1e-5), name
    assert float(logged["test/latents_used"]) == M.latents_used(logvar).score


@pytest.fixture(scope="module")
def holdout_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout")
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "circles", "xy-sbd.yaml")
    fit(
        config,
        out,
        "--data.dataset_options",
        "{holdout: center}",
        "--model.init_args.decoder_options",
        "{channels: [8]}",
    )
    return os.path.join(run_dirs(out, "circles-xy-sbd")[0], "checkpoints", "last.ckpt")


def test_eval_on_the_held_out_split(holdout_checkpoint, tmp_path):
    """--dataset-option split=heldout scores the model on the hole its training never saw, and only there."""
    out = tmp_path / "heldout.json"
    evaluate(
        [
            "--ckpt",
            holdout_checkpoint,
            "--metrics",
            "mig,elbo",
            "--preset",
            "quick",
            "--device",
            "cpu",
            "--no-tensorboard",
            "--no-progress",
            "--dataset-option",
            "split=heldout",
            "--output",
            str(out),
        ]
    )
    record = json.load(open(out))
    assert record["dataset"]["dataset_options"] == {"holdout": "center", "split": "heldout"}
    # The centre hole is cells 8..23 of 32 in both x and y: 2000 uniform draws over 16 values have entropy
    # just under ln 16; the training split, over all 32 x cells, would be near ln 32.
    entropy = record["metrics"]["mig"]["factor_entropy"]
    assert all(math.log(16) - 0.02 < h <= math.log(16) + 1e-12 for h in entropy), entropy
    model, dm, _ = model_from_checkpoint(holdout_checkpoint, torch.device("cpu"), {"split": "heldout"})
    assert record["metrics"]["elbo"]["elbo"] == pytest.approx(
        score(model, dm.data, ["elbo"], "quick")["elbo"].elbo, rel=1e-12
    )
    train = score(model, model_from_checkpoint(holdout_checkpoint, torch.device("cpu"))[1].data, ["elbo"], "quick")[
        "elbo"
    ]
    assert train.elbo != record["metrics"]["elbo"]["elbo"]


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "meta"])
def test_an_unknown_device_is_one_sentence_for_eval_and_report(name, tmp_path, capsys):
    from sbvae.cli.evaluate import resolve_device
    from sbvae.cli.report import main as report
    from sbvae.errors import SBVAEError

    with pytest.raises(SBVAEError, match=f"--device {name} is not a device sbvae runs on: use cpu, cuda"):
        resolve_device(name)
    with pytest.raises(SystemExit) as exit_info:
        report([str(tmp_path), "--device", name])
    assert exit_info.value.code == 2 and "is not a device sbvae runs on" in capsys.readouterr().err
    assert resolve_device("cpu") == torch.device("cpu")
