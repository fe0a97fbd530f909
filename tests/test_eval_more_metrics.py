"""disentanglement_lib's further metrics end to end: sbvae-eval (UDR over a replica run), MetricsCallback, the report."""

import json
import os

import numpy as np
import pytest
import torch

from sbvae import metrics as M
from sbvae.callbacks import MetricsCallback
from sbvae.cli.evaluate import main as evaluate
from sbvae.cli.report import main as report_main
from sbvae.errors import SBVAEError
from sbvae.evaluation import PRESETS, score
from sbvae.loading import model_from_checkpoint
from test_training import fit, run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--preset", "quick", "--device", "cpu", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def replica_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicas")
    fit(os.path.join(ROOT, "configs", "quickstart.yaml"), out, "--replicas", "3", "--trainer.max_steps", "12")
    (run,) = run_dirs(out)
    return out, run


def test_udr_over_a_replica_run_gives_each_replica_its_own_rank(replica_run, capsys):
    out, run = replica_run
    evaluate(["--ckpt", run, "--metrics", "elbo,irs,unsupervised", *QUICK])
    evaluate(["--ckpt", run, "--metrics", "udr", *QUICK])  # kept beside the first call's scores of the same step
    assert "scoring udr over the 3 checkpoints" in capsys.readouterr().out
    records = [
        json.load(open(os.path.join(run, f"replica_{k}", "checkpoints", "eval-quick-seed0.json"))) for k in range(3)
    ]
    # The same group result, computed here from the three loaded replicas with the library's metric.
    models = [
        model_from_checkpoint(os.path.join(run, f"replica_{k}", "checkpoints", "last.ckpt"), torch.device("cpu"))
        for k in range(3)
    ]
    params = PRESETS["quick"]["udr"]
    group = M.udr(models[0][1].data, [m.eval().encode for m, _, _ in models], seed=0, **params)
    for k, record in enumerate(records):
        udr = record["metrics"]["udr"]
        assert udr["model"] == k and udr["group_size"] == 3 and udr["params"]["num_data_points"] == 500
        assert udr["score"] == pytest.approx(float(group.scores[k]), abs=1e-12)
        assert udr["group_mean"] == pytest.approx(float(np.mean(group.scores)), abs=1e-12)
        assert udr["pairwise"] == pytest.approx(group.pairwise[:, k].tolist(), abs=1e-12)
        assert set(record["metrics"]) == {"elbo", "irs", "unsupervised", "udr"}
    # Single-model metrics are each replica's own: three seeds, three Gaussian total correlations.
    assert len({r["metrics"]["unsupervised"]["score"] for r in records}) == 3

    report_main([str(out), "--no-tensorboard"])
    text = open(os.path.join(out, "report", "report.md")).read()
    header = next(line for line in text.splitlines() if line.startswith("| group | seed |"))
    assert "IRS" in header and "Gaussian TC" in header and "UDR" in header
    for k, record in enumerate(records):  # UDR per seed, beside the seed's other scores
        line = next(line for line in text.splitlines() if line.startswith(f"| quickstart | {k} |"))
        assert f"{record['metrics']['udr']['score']:.4g}" in line.split(" | ")


def test_udr_of_a_single_checkpoint_is_refused_with_the_fix(replica_run, capsys):
    _, run = replica_run
    with pytest.raises(SystemExit) as exit_info:
        evaluate(["--ckpt", os.path.join(run, "replica_0", "checkpoints", "last.ckpt"), "--metrics", "udr", *QUICK])
    assert exit_info.value.code == 2
    assert "--replicas 2 or more" in capsys.readouterr().err


def test_metrics_callback_scores_the_new_single_model_metrics_and_refuses_udr(replica_run):
    _, run = replica_run
    model, dm, _ = model_from_checkpoint(
        os.path.join(run, "replica_1", "checkpoints", "last.ckpt"), torch.device("cpu")
    )
    results = score(model, dm.data, ["irs", "unsupervised"], "quick", seed=0)
    codes, factors = M.sample_codes(dm.data, model.represent, PRESETS["quick"]["irs"]["num_train"], 0)
    assert results["irs"].score == pytest.approx(M.irs_from_codes(codes, factors).score, abs=1e-12)
    assert results["unsupervised"].score == pytest.approx(M.unsupervised_from_codes(codes).score, rel=1e-9)
    params = PRESETS["quick"]["downstream_trees"]
    trees = score(model, dm.data, ["downstream_trees"], "quick", seed=0)["downstream_trees"]
    assert trees.score == M.downstream(dm.data, model.represent, seed=0, **params).score
    assert trees.predictor == "boosted_trees" and sorted(trees.test_accuracy) == params["num_train"]
    MetricsCallback(metrics=["irs", "unsupervised", "downstream"])  # accepted by name
    with pytest.raises(SBVAEError, match="ranks the seeds of one group"):
        MetricsCallback(metrics=["mig", "udr"])


def test_a_sweep_scores_udr_once_over_each_task_folder_and_the_rest_per_run():
    from sbvae import evaluation
    from sbvae.sweep import commands
    from sbvae.sweep.spec import load_sweep, select

    assert set(commands.GROUP_METRICS) == set(evaluation.GROUP_METRICS)
    sweep = load_sweep(os.path.join(ROOT, "configs", "paper", "locatello-grid.yaml"))
    assert "udr" in sweep.metrics
    task = select(sweep, None)[0]
    run = task.runs()[0]
    per_run = commands.eval_command(sweep, run, "/out")
    metrics = per_run[per_run.index("--metrics") + 1].split(",")
    assert "udr" not in metrics and {"mig", "irs", "downstream"} <= set(metrics)
    group = commands.group_eval_command(sweep, task, "/out")
    assert group[group.index("--metrics") + 1] == "udr" and group[group.index("--ckpt") + 1] == os.path.join(
        "/out", task.folder
    )
    assert "--output" not in group  # each replica's own record, beside its checkpoint
