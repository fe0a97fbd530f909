"""sbvae-report on hand-written sweep folders: exact mean ± std, the paper's rows, pooling, figures, geometry."""

import json
import math
import os

import numpy as np
import pytest
import torch

from sbvae.cli.report import main as report_main
from sbvae.errors import SBVAEError
from sbvae.paper import load_targets
from sbvae.report import figures as F
from sbvae.report.build import beta_axis, build_report, rate_distortion_series
from sbvae.report.collect import load_manifest
from sbvae.report.probes import latent_geometry, traversal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = os.path.join(ROOT, "configs", "paper", "targets.yaml")
PNG = b"\x89PNG\r\n\x1a\n"


def scores(elbo, nll, mig, fvae, latents=7):
    """sbvae-eval's metrics record; FactorVAE voted with ``latents`` dimensions, its per-factor accuracy x then fvae."""
    return {
        "elbo": {"elbo": elbo, "nll": nll, "kl": elbo - nll, "latents_used": latents, "num_images": 10000},
        "mig": {"score": mig, "factor_names": ["x", "y"]},
        "factor_vae": {
            "score": fvae,
            "num_active_dims": latents,
            "chance": 0.5,
            "per_factor_accuracy": [2 * fvae, fvae],
        },
    }


def make_sweep(folder, groups, steps=100, targets="colored-sprites", pool=(), rows=None):
    """A sweep folder as sbvae-sweep writes it: sweep.json, status.json and sbvae-eval JSON per run.

    groups: {name: {"values": {...}, "axes": {...}, "runs": [(seed, status, metrics or None)]}}
    """
    manifest_groups = []
    for name, spec in groups.items():
        tasks = []
        for seed, status, metrics in spec["runs"]:
            run = os.path.join("runs", name, f"seed_{seed}")
            os.makedirs(os.path.join(folder, run, "checkpoints"))
            step = steps if status == "completed" else steps // 2
            with open(os.path.join(folder, run, "status.json"), "w") as f:
                json.dump({"status": status, "global_step": step}, f)
            if metrics:
                with open(os.path.join(folder, run, "checkpoints", "eval-paper-seed0.json"), "w") as f:
                    json.dump(
                        {
                            "global_step": step,
                            "preset": "paper",
                            "device": "cuda",
                            "dataset": {"image_size": 64},
                            "metrics": metrics,
                        },
                        f,
                    )
            tasks.append(
                {"name": f"{name}/seed_{seed}", "seeds": [seed], "folder": run, "runs": [{"seed": seed, "folder": run}]}
            )
        manifest_groups.append(
            {
                "name": name,
                "config": "x.yaml",
                "overrides": spec.get("values", {}),
                "axes": spec.get("axes", {}),
                "values": spec.get("values", {}),
                "tasks": tasks,
            }
        )
    table = (
        {"table": targets, "rows": rows or {}, "file": TARGETS, "data": load_targets(TARGETS)[targets]}
        if targets
        else None
    )
    manifest = {
        "name": "fixture",
        "description": "hand-written",
        "steps": steps,
        "paper_steps": 1500000,
        "seeds": [0, 1, 2],
        "metrics": ["elbo", "mig", "factor_vae"],
        "preset": "paper",
        "pool": list(pool),
        "targets": table,
        "figures": None,
        "groups": manifest_groups,
    }
    with open(os.path.join(folder, "sweep.json"), "w") as f:
        json.dump(manifest, f)
    return folder


@pytest.fixture
def two_decoders(tmp_path):
    return make_sweep(
        str(tmp_path),
        {
            "sbd": {
                "runs": [
                    (0, "completed", scores(330, 305, 0.10, 0.20, 7)),
                    (1, "completed", scores(340, 314, 0.20, 0.25, 8)),
                    (2, "completed", scores(350, 323, 0.30, 0.30, 9)),
                ]
            },
            "deconv": {
                "runs": [
                    (0, "completed", scores(350, 325, 0.05, 0.15)),
                    (1, "completed", scores(360, 334, 0.07, 0.17)),
                    (2, "diverged", None),
                ]
            },
        },
    )


def test_table_has_mean_std_counts_and_the_papers_rows(two_decoders, capsys):
    report_main([two_decoders, "--no-tensorboard"])
    out = capsys.readouterr().out
    assert "drew 1 mig histogram figure(s)" in out and "wrote" in out
    text = open(os.path.join(two_decoders, "report", "report.md")).read()
    # sbd: ELBO 330/340/350, NLL 305/314/323, KL 25/26/27, latents 7/8/9, MIG .1/.2/.3, FactorVAE .2/.25/.3
    assert (
        "| **sbd** | sbvae | 3 / 3 | 0 | 100 | 340.0 ± 10.0 | 314.0 ± 9.0 | 26.00 ± 1.00 | 8.00 ± 1.00 "
        "| 0.200 ± 0.100 | 0.250 ± 0.050 |"
    ) in text
    assert (
        "|  | paper: Spatial Broadcast VAE, 3 conv layers | – | – | 1,500,000 | 329 ± 4.1 | 305 ± 4.6 | 24.4 ± 0.54 "
        "| 7.22 ± 0.34 | 0.147 ± 0.057 | 0.208 ± 0.084 † |"
    ) in text
    assert "† FactorVAE: paper's protocol undocumented; not comparable." in text
    # Each FactorVAE score beside chance for the factor count, its active dimensions and each factor's accuracy.
    assert "| sbd | 0.250 ± 0.050 | 0.500 | 8.00 ± 1.00 | x 0.50, y 0.25 |" in text
    assert "| deconv | 0.160 ± 0.014 | 0.500 | 7.00 ± 0.00 | x 0.32, y 0.16 |" in text
    assert "moves by about ±0.05 between seeds" in text
    # deconv: two scored seeds and one diverged; std of 350, 360 is sqrt(50) = 7.07
    assert (
        "| **deconv** | sbvae | 2 / 3 | 1 | 100 | 355.0 ± 7.1 | 329.5 ± 6.4 | 25.50 ± 0.71 | 7.00 ± 0.00 | 0.060 ± 0.014 |"
        in text
    )
    assert "paper: DeConv VAE, MLP 1 layer" in text and "0.052 ± 0.02" in text
    assert "- Runs: 6 (5 completed, 1 diverged)." in text and "- Trained on: cuda." in text
    assert "| deconv | 2 | diverged | 50 |" in text
    summary = json.load(open(os.path.join(two_decoders, "report", "summary.json")))
    sbd, deconv = summary["rows"]
    assert sbd["stats"]["mig"]["n"] == 3 and sbd["stats"]["mig"]["mean"] == pytest.approx(0.2)
    assert sbd["stats"]["mig"]["std"] == pytest.approx(0.1)
    assert deconv["stats"]["mig"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert deconv["diverged"] == 1 and deconv["status"] == {"completed": 2, "diverged": 1} and deconv["scored"] == 2
    assert sbd["paper"]["row"] == "sbd" and sbd["paper"]["elbo"] == [329, 4.1]
    assert summary["protocol"]["steps"] == 100 and summary["protocol"]["paper_steps"] == 1500000
    # No checkpoints in the fixture: the MIG histogram only, drawn from the JSON.
    assert [f["file"] for f in summary["figures"]] == ["mig_histograms.png"]
    assert open(os.path.join(two_decoders, "report", "mig_histograms.png"), "rb").read(8) == PNG


def test_pooled_axes_make_one_row_matched_to_the_papers_row(tmp_path):
    key = "model.init_args.decoder_options.shuffle_seed"
    groups = {
        f"shuffle_seed{i}": {
            "axes": {key: f"shuffle_seed{i}"},
            "values": {key: i},
            "runs": [(0, "completed", scores(360 + i, 335, 0.1 * (i + 1), 0.2))],
        }
        for i in range(3)
    }
    folder = make_sweep(str(tmp_path), groups, pool=[key], rows={"fixture": "sbd-shuffled"})
    report = build_report(folder, tensorboard=False, echo=lambda _: None)
    (row,) = report.rows
    assert row.name == "fixture" and row.groups == ["shuffle_seed0", "shuffle_seed1", "shuffle_seed2"]
    assert row.stats["mig"].n == 3 and row.stats["mig"].mean == pytest.approx(0.2)
    assert row.stats["elbo"].mean == pytest.approx(361) and row.stats["elbo"].std == pytest.approx(1.0)
    assert row.paper_key == "sbd-shuffled" and row.paper["mig"] == [0.104, 0.025]
    text = open(os.path.join(folder, "report", "report.md")).read()
    assert "| **fixture** | sbvae | 3 / 3 | 0 | 100 |" in text and "paper: SBD with shuffled coordinates" in text


def test_rate_distortion_over_beta(tmp_path):
    key = "model.init_args.beta"
    groups = {}
    for decoder, offset in (("sbd", 0), ("deconv", 20)):
        for beta in (0.5, 1.0, 2.0):
            groups[f"{decoder}_beta{beta:g}"] = {
                "axes": {"config": decoder, key: f"beta{beta:g}"},
                "values": {"config": decoder, key: beta},
                "runs": [
                    (
                        s,
                        "completed",
                        scores(300 + offset + 10 * beta + s, 280 + offset + 20 * beta + s, 0.1 * beta, 0.2),
                    )
                    for s in (0, 1)
                ],
            }
    folder = make_sweep(str(tmp_path), groups, targets=None)
    report = build_report(folder, tensorboard=False, echo=lambda _: None)
    assert [p.file for p in report.pictures] == ["mig_histograms.png", "rate_distortion.png"]
    series = rate_distortion_series(report.manifest, report.results, beta_axis(report.manifest))
    assert sorted(series) == ["deconv", "sbd"]  # one series per setting of the other axes
    assert sorted((p["beta"], p["nll"]) for p in series["sbd"]) == [
        (0.5, 290.0),
        (0.5, 291.0),
        (1.0, 300.0),
        (1.0, 301.0),
        (2.0, 320.0),
        (2.0, 321.0),
    ]
    # The figure's mean line per decoder: NLL at each beta is the mean over the two seeds.
    fig = F.rate_distortion(series)
    kl_axis = fig.axes[0]
    deconv_line = kl_axis.lines[0]  # series are drawn in sorted order: deconv first
    assert np.allclose(deconv_line.get_ydata(), [280 + 20 + 10 + 0.5, 280 + 20 + 20 + 0.5, 280 + 20 + 40 + 0.5])
    assert np.allclose(deconv_line.get_xdata(), [20 - 5, 20 - 10, 20 - 20])  # KL = ELBO - NLL = 20 - 10 beta
    assert len(kl_axis.collections[0].get_offsets()) == 6  # one point per run
    F.plt.close(fig)


def tiny_model():
    from sbvae.module import VAE

    torch.manual_seed(0)
    return VAE(
        decoder="spatial_broadcast",
        image_size=16,
        channels=3,
        encoder_options={"channels": [8, 8, 8, 8], "hidden": 16},
        decoder_options={"channels": [8]},
    ).eval()


def test_geometry_of_a_holdout_run_marks_the_held_out_points():
    from sbvae.datasets import load

    data = load("circles-xy", image_size=16, holdout="center")
    g = latent_geometry(tiny_model(), data, points=16)
    assert g.codes.shape == (16, 16, 2) and g.factor_names == ("x", "y")
    # 32 cells per factor, every second one kept (0, 2, ..., 30); the hole is cells 8..23 of both: 8 x 8 points.
    assert g.heldout.sum() == 64
    hole = (g.factor_values > 0.35) & (g.factor_values < 0.65)
    assert np.array_equal(g.heldout, hole[..., 0] & hole[..., 1])
    fig = F.latent_geometry([("untrained", g)])
    black = [c for ax in fig.axes[1:] for c in ax.collections if np.allclose(c.get_facecolor()[0][:3], 0)]
    assert len(black) == 1 and np.allclose(black[0].get_offsets(), g.codes[g.heldout])
    factor_black = [c for c in fig.axes[0].collections if np.allclose(c.get_facecolor()[0][:3], 0)]
    assert np.allclose(factor_black[0].get_offsets(), g.factor_values[g.heldout])
    F.plt.close(fig)


def test_geometry_of_blank_images_marks_the_blank_code():
    from sbvae.datasets import load

    data = load("circles-xh", image_size=16, blank_fraction=0.5)
    model = tiny_model()
    g = latent_geometry(model, data, points=4)
    assert g.codes.shape == (4, 4, 2) and not g.heldout.any() and g.blank is not None
    with torch.no_grad():
        blank = model.encode(torch.zeros(1, 3, 16, 16))[0][0, list(g.latents)].numpy()
    assert np.allclose(g.blank, blank)
    fig = F.latent_geometry([("blank", g)])
    stars = [line for line in fig.axes[1].lines if line.get_marker() == "*"]
    assert len(stars) == 1 and np.allclose(stars[0].get_xydata()[0], g.blank)
    F.plt.close(fig)


def test_geometry_refuses_datasets_without_two_factors():
    from sbvae.datasets import load

    with pytest.raises(ValueError, match="two factors"):
        latent_geometry(tiny_model(), load("circles-xyh-small", image_size=16))


def test_traversal_rows_are_labelled_by_latent_std_and_kl():
    from sbvae.data import GroundTruthDataModule

    model = tiny_model()
    datamodule = GroundTruthDataModule(dataset="circles-xy", image_size=16, val_size=32)
    t = traversal(model, datamodule, order_images=32, steps=5)
    with torch.no_grad():
        factors = datamodule.validation_factors()[:32]
        mean, logvar = model.encode(datamodule.render_fixed(factors, torch.arange(32)))
    std = (0.5 * logvar).exp().mean(0)
    assert t.latents == logvar.exp().mean(0).argsort().tolist()  # most informative (smallest variance) first
    first = t.latents[0]
    kl = (0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)).mean(0)[first]
    assert t.labels[0] == f"z{first}  std {std[first]:.2f}  KL {kl:.2f}"
    assert t.grid.shape == (2 + 10 * 18, 2 + 5 * 18, 3) and t.values == [-2.0, -1.0, 0.0, 1.0, 2.0]
    fig = F.traversal_figure(t, "tiny")
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == t.labels
    F.plt.close(fig)


def plain_run(
    folder, seed, steps=10, decoder="sbd", mig=None, replicas=(), save_dir="runs", write_config=True, preset="quick"
):
    """An sbvae-train run folder as it leaves one: config.yaml, status.json, and sbvae-eval's JSON (with ``mig``);
    with ``replicas`` (their MIGs), a replica set of seeds seed, seed + 1, ..."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"status": "completed", "global_step": steps}))
    if write_config:
        (folder / "config.yaml").write_text(
            f"seed_everything: {seed}\nreplicas: {len(replicas) or 1}\nckpt_path: null\n"
            f"trainer: {{max_steps: {steps}, logger: {{init_args: {{save_dir: {save_dir}, version: {folder.name}}}}}}}\n"
            f"model: {{init_args: {{decoder: {decoder}}}}}\n"
        )
    score = lambda run, m: (run / "checkpoints" / f"eval-{preset}-seed0.json").write_text(
        json.dumps({"global_step": steps, "preset": preset, "metrics": {"mig": {"score": m}}})
    )
    if mig is not None:
        score(folder, mig)
    for k, m in enumerate(replicas):
        replica = folder / f"replica_{k}"
        (replica / "checkpoints").mkdir(parents=True)
        (replica / "status.json").write_text(
            json.dumps({"status": "completed", "global_step": steps, "seed": seed + k})
        )
        score(replica, m)


def test_plain_training_runs_are_grouped_by_folder(tmp_path):
    for name, seeds in (("sbd", (3, 4)), ("deconv", (3,))):
        for k, seed in enumerate(seeds):
            plain_run(tmp_path / name / f"version_{k}", seed, decoder=name, mig=0.1 * seed)
    # A replica-parallel run (seeds 7 and 8): its replicas are the runs; the set's folder has no model.
    plain_run(tmp_path / "factorvae" / "version_0", 7, decoder="factorvae", replicas=(0.5, 0.6))
    manifest = load_manifest(str(tmp_path))
    assert manifest["preset"] == "quick"
    assert {g["name"]: [r["seed"] for t in g["tasks"] for r in t["runs"]] for g in manifest["groups"]} == {
        "deconv": [3],
        "factorvae": [7, 8],
        "sbd": [3, 4],
    }
    factorvae = next(g for g in manifest["groups"] if g["name"] == "factorvae")
    assert [t["folder"] for t in factorvae["tasks"]] == [
        os.path.join("factorvae", "version_0", f"replica_{k}") for k in (0, 1)
    ]
    report = build_report(str(tmp_path), tensorboard=False, echo=lambda _: None)
    by_name = {r.name: r for r in report.rows}
    assert by_name["sbd"].stats["mig"].mean == pytest.approx(0.35)
    assert by_name["factorvae"].stats["mig"].mean == pytest.approx(0.55)
    # A run that trained on after it was scored: its old scores are left out, and a note says how to rescore.
    (tmp_path / "deconv" / "version_0" / "status.json").write_text(
        json.dumps({"status": "completed", "global_step": 20})
    )
    (tmp_path / "deconv" / "version_0" / "config.yaml").write_text(
        (tmp_path / "deconv" / "version_0" / "config.yaml").read_text().replace("max_steps: 10", "max_steps: 20")
    )
    said = []
    stale = build_report(str(tmp_path), tensorboard=False, echo=said.append)
    assert not next(r for r in stale.results if r.group == "deconv").scores
    assert said[0] == stale.notes[-1]  # the reason a run is left out is on the terminal too
    assert any(
        "1 completed run(s) trained on after their scores" in n
        and "scores of step 10, checkpoint at step 20" in n
        and "sbvae-eval --ckpt" in n
        for n in stale.notes
    )
    assert not any("trained on after" in n for n in report.notes)
    from sbvae.report.build import markdown

    assert "stopped short of the protocol" not in markdown(report)
    manifest, report.manifest = report.manifest, {**report.manifest, "steps": 10**6}  # a --set steps= since
    assert f"{len(report.results)} completed run(s) stopped short of the protocol's 1,000,000 steps" in markdown(report)
    report.manifest = manifest
    for scored in (report.results, [r for r in report.results if not r.scores]):  # with and without score columns
        report.results = scored
        table = markdown(report).split("## Runs", 1)[1].split("\n## ", 1)[0].strip().splitlines()[2:]
        assert len({line.count("|") for line in table}) == 1 and "|  |" not in table[0], table[:2]


def test_plain_runs_pool_by_config_and_steps_and_count_each_seed_once(tmp_path):
    """A runs folder that mixes configs, step counts and a repeated seed: one row per (config minus seed, steps)."""
    runs = tmp_path / "runs"
    plain_run(runs / "a" / "version_0", 0, steps=120, mig=0.50)  # sbd, 120 steps
    plain_run(runs / "a" / "version_1", 0, steps=20, replicas=(0.10, 0.20))  # sbd, 20 steps, seeds 0, 1
    plain_run(runs / "a" / "version_2", 0, steps=120, save_dir="elsewhere")  # seed 0 again, never scored: refused
    plain_run(runs / "a" / "version_3", 1, steps=120, mig=0.30)  # sbd, 120 steps, seed 1
    plain_run(runs / "a" / "version_4", 0, steps=120, decoder="deconv", mig=0.05)  # another config
    plain_run(runs / "b" / "version_0", 1, steps=120, decoder="deconv", mig=0.07, save_dir="other")  # pools with it
    plain_run(runs / "a" / "version_5", 0, steps=120, decoder="coordconv", mig=0.15)  # a third config under a/
    plain_run(runs / "c" / "version_0", 5, mig=0.4, write_config=False)  # what it trained is unknown
    report = build_report(str(tmp_path), tensorboard=False, echo=lambda _: None)
    rows = {r.name: sorted((x.seed, x.scores["mig"]) for x in r.runs) for r in report.rows}
    # Rows are named by their folders; where two share them, by what sets them apart.
    assert rows == {
        "runs/a [decoder=sbd, 120 steps]": [(0, 0.50), (1, 0.30)],
        "runs/a [decoder=sbd, 20 steps]": [(0, 0.10), (1, 0.20)],
        "runs/a [decoder=coordconv, 120 steps]": [(0, 0.15)],
        "runs/a+runs/b": [(0, 0.05), (1, 0.07)],
    }
    means = {r.name: r.stats["mig"].mean for r in report.rows}
    assert means["runs/a [decoder=sbd, 120 steps]"] == pytest.approx(0.40) and means["runs/a+runs/b"] == pytest.approx(
        0.06
    )
    refused = {r["folder"]: r["reason"] for r in report.manifest["refused"]}
    assert refused == {
        os.path.join("runs", "a", "version_2"): "seed 0 of the same config and steps is already counted from "
        + os.path.join("runs", "a", "version_0"),
        os.path.join("runs", "c", "version_0"): "no config.yaml, so what it trained is unknown",
    }
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Runs not pooled" in text and "runs/a/version_2 (seed 0): seed 0 of the same config" in text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {r["folder"] for r in summary["refused"]} == set(refused)
    replica_seed = next(s for row in summary["rows"] for s in row["seeds"] if s["folder"].endswith("replica_1"))
    assert replica_seed["seed"] == 1
    train, score = replica_seed["rerun"]
    assert train.startswith("sbvae-train fit --config " + str(runs / "a" / "version_1" / "config.yaml"))
    assert "--seed_everything 1 --replicas 1 --ckpt_path null" in train and score.startswith("sbvae-eval --ckpt ")


def test_sweep_report_prints_each_seeds_rerun_command(two_decoders):
    with open(os.path.join(two_decoders, "sweep.json")) as f:
        manifest = json.load(f)
    manifest["groups"][0]["overrides"] = {"data.image_size": 32}
    with open(os.path.join(two_decoders, "sweep.json"), "w") as f:
        json.dump(manifest, f)
    os.makedirs(os.path.join(two_decoders, "tasks"))
    with open(os.path.join(two_decoders, "tasks", "sbd--seed_1.json"), "w") as f:
        json.dump({"task": "sbd/seed_1", "device": "cpu (2 cores)", "threads": 1}, f)
    report = build_report(two_decoders, tensorboard=False, echo=lambda _: None)
    run = next(r for r in report.results if r.group == "sbd" and r.seed == 1)
    train, score = run.rerun
    assert train == (
        "OMP_NUM_THREADS=1 sbvae-train fit --config x.yaml --data.image_size 32 --seed_everything 1 "
        "--trainer.max_steps 100 --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "
        "runs/rerun --trainer.logger.init_args.name sbd --trainer.logger.init_args.version seed_1"
    )
    assert score == (
        "OMP_NUM_THREADS=1 sbvae-eval --ckpt runs/rerun/sbd/seed_1/checkpoints/last.ckpt --metrics "
        "elbo,mig,factor_vae --preset paper --seed 0 --output runs/rerun/sbd/seed_1/checkpoints/eval-paper-seed0.json"
    )
    assert not next(r for r in report.results if r.group == "sbd" and r.seed == 0).rerun[0].startswith("OMP")
    text = open(os.path.join(two_decoders, "report", "report.md")).read()
    assert "## Rerun one seed" in text and "sbd, seed 0:" in text and "deconv, seed 0:" in text


def test_report_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("sbvae-report: ")
    with pytest.raises(SystemExit):
        report_main([str(tmp_path)])
    assert "no sweep.json and no run folders" in capsys.readouterr().err
    bad = tmp_path / "targets.yaml"
    bad.write_text("tables: {t: {rows: {a: {mig: 0.1}}}}\n")
    with pytest.raises(SBVAEError, match=r"t/a.mig must be \[mean, std\]"):
        load_targets(str(bad))


def fake_checkpoint(path, dataset_options):
    """An sbvae checkpoint of an untrained tiny VAE on 16 px circles-xy: what sbvae-eval and the report load."""
    from sbvae.data import GroundTruthDataModule

    model = tiny_model()
    datamodule = GroundTruthDataModule(
        dataset="circles-xy", dataset_options=dataset_options, image_size=16, val_size=32
    )
    torch.save(
        {
            "sbvae_model_class": "sbvae.module.VAE",
            "hyper_parameters": dict(model.hparams),
            "datamodule_hyper_parameters": dict(datamodule.hparams),
            "state_dict": model.state_dict(),
            "global_step": 100,
        },
        path,
    )


def test_report_of_holdout_runs_draws_geometry_and_traversals(tmp_path):
    folder = make_sweep(
        str(tmp_path),
        {"sbd": {"runs": [(0, "completed", scores(330, 305, 0.1, 0.2)), (1, "completed", scores(331, 306, 0.3, 0.2))]}},
        targets=None,
    )
    for seed in (0, 1):
        fake_checkpoint(
            os.path.join(folder, "runs", "sbd", f"seed_{seed}", "checkpoints", "last.ckpt"), {"holdout": "center"}
        )
    report = build_report(folder, tensorboard=True, geometry_points=8, echo=lambda _: None)
    files = [p.file for p in report.pictures]
    assert files == ["mig_histograms.png", "geometry-sbd.png", "traversals-sbd.png"]
    titles = [p.title for p in report.pictures]
    assert titles[2] == "sbd: median seed 0, MIG 0.100"  # the lower of two seeds is the median
    for name in files:
        assert open(os.path.join(folder, "report", name), "rb").read(8) == PNG
    text = open(os.path.join(folder, "report", "report.md")).read()
    assert "![sbd: latent geometry](geometry-sbd.png)" in text and "held-out points are black" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    best = EventAccumulator(os.path.join(folder, "runs", "sbd", "seed_1"), size_guidance={"images": 0})
    best.Reload()
    assert "report/latent_geometry" in best.Tags()["images"]  # the geometry figure is the best seed's
