"""sbvae-sweep: grid expansion, run states, dry-run and Slurm output, and one tiny real sweep end to end."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sbvae.cli.sweep import main as sweep_main
from sbvae.errors import SBVAEError
from sbvae.sweep import state as S
from sbvae.sweep.estimate import DEFAULT_IMAGES_PER_S, lookup, precision_name, read_rows
from sbvae.sweep.runner import Runner
from sbvae.sweep.spec import load_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SMOKE = os.path.join(CONFIGS, "paper", "smoke.yaml")
CPU_STUDY = os.path.join(CONFIGS, "paper", "cpu-study.yaml")
QUICKSTART = os.path.join(CONFIGS, "quickstart.yaml")


def write_sweep(folder, **content):
    path = os.path.join(folder, "sweep.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(content, f, sort_keys=False)
    return path


def test_grid_expands_to_exact_groups_tasks_and_runs(tmp_path):
    path = write_sweep(
        tmp_path,
        name="grid",
        base=QUICKSTART,
        steps=50,
        seeds=[5, 0, 1, 2],
        replicas=2,
        overrides={"data.image_size": 16},
        grid={"model.init_args.decoder": ["spatial_broadcast", "deconv"], "model.init_args.beta": [0.5, 2]},
    )
    sweep = load_sweep(str(path))
    # "_" joins the labels of a group name, so inside a label it becomes "-".
    assert [g.name for g in sweep.groups] == [
        "spatial-broadcast_beta0.5",
        "spatial-broadcast_beta2",
        "deconv_beta0.5",
        "deconv_beta2",
    ]
    group = sweep.groups[2]
    assert group.overrides == {"data.image_size": 16, "model.init_args.decoder": "deconv", "model.init_args.beta": 0.5}
    assert group.config == QUICKSTART
    # Seeds sorted, cut into consecutive blocks of at most 2 replicas: {0, 1}, {2}, {5}.
    assert [t.name for t in group.tasks] == [
        "deconv_beta0.5/seeds_0-1",
        "deconv_beta0.5/seed_2",
        "deconv_beta0.5/seed_5",
    ]
    assert [(r.seed, r.folder) for r in group.runs()] == [
        (0, "runs/deconv_beta0.5/seeds_0-1/replica_0"),
        (1, "runs/deconv_beta0.5/seeds_0-1/replica_1"),
        (2, "runs/deconv_beta0.5/seed_2"),
        (5, "runs/deconv_beta0.5/seed_5"),
    ]
    assert len(sweep.runs()) == 16 and len(sweep.tasks()) == 12


def test_variants_labels_and_set(tmp_path):
    path = write_sweep(
        tmp_path,
        base=QUICKSTART,
        steps=10,
        seeds=2,
        overrides={"model.init_args.lr": 0.01},
        grid={
            "variant": {
                "a": {"config": os.path.join(CONFIGS, "sprites", "vae-deconv.yaml"), "model.init_args.lr": 0.1},
                "b": {"model.init_args.beta": 3},
            },
            "model.init_args.decoder_options.channels": [[32], [32, 32]],
        },
    )
    sweep = load_sweep(
        str(path), ["steps=7", "seeds=[4]", "data.image_size=32", "model.init_args.decoder_options.channels=[[16]]"]
    )
    assert sweep.name == "sweep" and sweep.steps == 7 and sweep.seeds == (4,)
    assert [g.name for g in sweep.groups] == ["a_channels16", "b_channels16"]
    a, b = sweep.groups
    assert a.config.endswith("vae-deconv.yaml") and b.config == QUICKSTART
    assert a.overrides == {
        "model.init_args.lr": 0.1,
        "data.image_size": 32,
        "model.init_args.decoder_options.channels": [16],
    }
    assert b.overrides == {
        "model.init_args.lr": 0.01,
        "data.image_size": 32,
        "model.init_args.beta": 3,
        "model.init_args.decoder_options.channels": [16],
    }
    assert [t.name for t in a.tasks] == ["a_channels16/seed_4"]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"steps": 5, "seeds": 1}, "missing key 'base'"),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "epochs": 3}, "unknown key(s) ['epochs']"),
        ({"base": "nowhere.yaml", "steps": 5, "seeds": 1}, "relative to the sweep file's folder"),
        ({"base": QUICKSTART, "steps": 0, "seeds": 1}, "steps must be an integer >= 1"),
        ({"base": QUICKSTART, "steps": 5, "seeds": [1, 1]}, "seeds repeat a value"),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "overrides": {"trainer.max_steps": 9}}, "use steps instead"),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "overrides": {"beta": 9}}, "must be a dotted sbvae-train key"),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "metrics": ["mig", "bogus"]}, "unknown metric"),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "grid": {"model.init_args.beta": []}}, "non-empty list"),
        (
            {"base": QUICKSTART, "steps": 5, "seeds": 1, "grid": {"model.init_args.beta": [1]}, "pool": ["data.x"]},
            "not grid keys",
        ),
        (
            {
                "base": QUICKSTART,
                "steps": 5,
                "seeds": 1,
                "targets": "table99",
                "targets_file": os.path.join(CONFIGS, "paper", "targets.yaml"),
            },
            "targets table 'table99' is not in",
        ),
        ({"base": QUICKSTART, "steps": 5, "seeds": 1, "targets": "colored-sprites"}, "targets file"),
    ],
)
def test_bad_sweep_files_name_the_fix(tmp_path, content, message):
    path = write_sweep(tmp_path, **content)
    with pytest.raises(SBVAEError) as info:
        load_sweep(str(path))
    assert message in str(info.value)


def test_cli_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--dry-run", "--set", "steps"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sbvae-sweep: --set expects KEY=VALUE") and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--dry-run", "--only", "nosuchgroup"])
    assert exit_info.value.code == 2
    assert "its groups are sbd, deconv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep_main(["status", str(tmp_path)])
    assert "has no sweep.json" in capsys.readouterr().err


def test_dry_run_prints_runs_groups_replicas_and_time(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "configs").mkdir()
    with open(repo / "benchmarks" / "results" / "throughput-h100.json", "w") as f:
        json.dump(
            {
                "device": "NVIDIA H100",
                "results": [
                    {"model": "sbd", "batch": 16, "replicas": 1, "path": "trainer", "images_per_s": 2000.0},
                    {"model": "sbd", "batch": 16, "replicas": 3, "path": "trainer", "images_per_s": 6000.0},
                ],
            },
            f,
        )
    path = write_sweep(
        repo / "configs",
        name="dry",
        base=QUICKSTART,
        steps=1000,
        seeds=3,
        overrides={"data.batch_size": 16, "data.image_size": 64, "trainer.accelerator": "auto"},
        grid={"model.init_args.decoder": {"sbd": "spatial_broadcast", "deconv": "deconv"}},
    )
    sweep_main(["run", path, "--dry-run", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "6 runs in 2 groups, 2 training processes; 1,000 steps per run" in out
    assert "sbd/seeds_0-2" in out and "deconv/seeds_0-2" in out
    # One process per group: seeds 0..2 as 3 replicas.
    assert out.count("--seed_everything 0") == 2 and out.count("--replicas 3") == 2
    assert "--trainer.logger.init_args.version seeds_0-2" in out
    # sbd: 1000 steps x 16 images x 3 replicas at the measured 6,000 img/s = 8 s; deconv: the stated default.
    assert "throughput-h100.json (NVIDIA H100): sbd, batch 16, 3 replica(s), 6,000 img/s" in out
    assert "assumed 1,470 img/s" in out and "no GPU row in benchmarks/results matches deconv" in out
    deconv_seconds = 1000 * 16 * 3 / DEFAULT_IMAGES_PER_S
    assert f"estimated device time: {8 + deconv_seconds:.0f} s for 96,000 training images" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_of_a_cpu_sweep_times_it_from_cpu_rows_and_shares_the_cores(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "configs").mkdir()
    (repo / "benchmarks" / "results" / "throughput-cpu.json").write_text(
        json.dumps(
            {
                "device": "cpu (2 cores, 1 threads)",
                "image_size": 32,
                "results": [{"model": "sbd", "batch": 16, "replicas": 2, "path": "trainer", "images_per_s": 160.0}],
            }
        )
    )
    (repo / "benchmarks" / "results" / "throughput-cuda.json").write_text(
        json.dumps(
            {
                "device": "NVIDIA H200",
                "results": [{"model": "sbd", "batch": 16, "replicas": 2, "path": "trainer", "images_per_s": 99999.0}],
            }
        )
    )
    path = write_sweep(
        repo / "configs",
        name="cpu",
        base=QUICKSTART,
        steps=100,
        seeds=4,
        replicas=2,
        overrides={"data.batch_size": 16, "data.image_size": 32},
    )
    sweep_main(["run", path, "--dry-run", "--jobs", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    # 2 processes x 100 steps x 16 images x 2 replicas at 160 img/s = 20 s each, 40 s in all, 20 s with 2 jobs.
    assert "estimated device time: 40 s for 6,400 training images" in out and "throughput-cpu.json" in out
    assert "99,999" not in out and "with --jobs 2 the CPU tasks take about 20 s of wall time" in out


def test_throughput_lookup_prefers_same_batch_and_replicas_and_scales_pixels(tmp_path):
    (tmp_path / "throughput-a.json").write_text(
        json.dumps(
            {
                "device": "H100",
                "results": [
                    {"model": "sbd", "batch": 16, "replicas": 1, "path": "trainer", "images_per_s": 1000.0},
                    {"model": "sbd", "batch": 16, "replicas": 16, "path": "trainer", "images_per_s": 50000.0},
                    {"model": "sbd", "batch": 256, "replicas": 1, "path": "trainer", "images_per_s": 15000.0},
                ],
            }
        )
    )
    (tmp_path / "train-cpu.json").write_text(
        json.dumps(
            {"device": "cpu (2 cores)", "results": [{"model": "vae-deconv", "batch_size": 16, "images_per_s": 10.0}]}
        )
    )
    rows = read_rows(str(tmp_path))
    assert [(r["kind"], r["cpu"]) for r in rows] == [("sbd", False)] * 3 + [("deconv", True)]
    assert lookup(rows, "sbd", 16, 15, 64).images_per_s == 50000.0
    assert lookup(rows, "sbd", 16, 1, 32).images_per_s == 4000.0  # a quarter of the pixels
    assert lookup(rows, "sbd", 256, 1, 64).images_per_s == 15000.0
    assert lookup(rows, "deconv", 16, 1, 64).images_per_s == DEFAULT_IMAGES_PER_S  # a CPU row never times a GPU run
    # A CPU run is timed by CPU rows only, and the row of its own image size beats a scaled one.
    assert lookup(rows, "deconv", 16, 1, 64, cpu=True).images_per_s == 10.0
    (tmp_path / "throughput-cpu-32px.json").write_text(
        json.dumps(
            {
                "device": "cpu (2 cores)",
                "image_size": 32,
                "results": [{"model": "deconv", "batch": 16, "replicas": 4, "path": "trainer", "images_per_s": 30.0}],
            }
        )
    )
    assert lookup(read_rows(str(tmp_path)), "deconv", 16, 1, 32, cpu=True).images_per_s == 30.0
    unknown = lookup(rows, "sbd", 16, 1, 64, cpu=True)
    assert math.isnan(unknown.images_per_s) and "no CPU row in benchmarks/results measures sbd" in unknown.source


def test_a_bf16_measurement_times_only_bf16_runs(tmp_path):
    """The GPU check writes throughput-cuda-bf16.json beside throughput-cuda.json, and the bf16 file sorts
    first: an fp32 sweep must still be timed by the fp32 rows."""
    for name, precision, rate in (
        ("throughput-cuda-bf16.json", "bf16-mixed", 30000.0),
        ("throughput-cuda.json", "32-true", 10000.0),
    ):
        (tmp_path / name).write_text(
            json.dumps(
                {
                    "device": "NVIDIA H200",
                    "precision": precision,
                    "results": [{"model": "sbd", "batch": 16, "replicas": 1, "path": "trainer", "images_per_s": rate}],
                }
            )
        )
    rows = read_rows(str(tmp_path))
    assert lookup(rows, "sbd", 16, 1, 64).images_per_s == 10000.0
    assert lookup(rows, "sbd", 16, 1, 64, precision="32-true").images_per_s == 10000.0
    assert lookup(rows, "sbd", 16, 1, 64, precision="bf16-mixed").images_per_s == 30000.0
    # Lightning's short names are the same precisions.
    assert [precision_name(p) for p in (None, 32, "32", "bf16", 16, "bf16-true")] == [
        "32-true",
        "32-true",
        "32-true",
        "bf16-mixed",
        "16-mixed",
        "bf16-true",
    ]
    # A precision nobody measured is not timed by another's rate: the GPU default, saying which it lacks.
    other = lookup(rows, "sbd", 16, 1, 64, precision="16-mixed")
    assert other.images_per_s == DEFAULT_IMAGES_PER_S and other.source.endswith("matches sbd in 16-mixed")
    assert lookup(rows[:1], "sbd", 16, 1, 64).images_per_s == DEFAULT_IMAGES_PER_S  # the bf16 file alone
    cpu = lookup(rows, "sbd", 16, 1, 64, cpu=True, precision="bf16-mixed")
    assert math.isnan(cpu.images_per_s) and "--precision bf16-mixed measures one" in cpu.source


def test_emit_slurm_names_every_task(tmp_path, capsys):
    out = tmp_path / "out"
    sweep_main(
        [
            "run",
            os.path.join(CONFIGS, "paper", "fig4-rate-distortion.yaml"),
            "--emit",
            "slurm",
            "--out",
            str(out),
            "--set",
            "replicas=5",
        ]
    )
    script = (out / "sweep.sbatch").read_text()
    sweep = load_sweep(str(out / "sweep.yaml"))  # the resolved sweep file is rerunnable as it is
    names = [t.name for t in sweep.tasks()]
    assert len(names) == 2 * 7 * 2 and "sbd_beta0.4/seeds_0-4" in names and "deconv_beta5.4/seeds_5-9" in names
    assert f"#SBATCH --array=0-{len(names) - 1}" in script
    assert "TASKS=(" + " ".join(names) + ")" in script
    assert f'sbvae.cli.sweep run {out / "sweep.yaml"} --out {out} --only "$TASK"' in script
    assert subprocess.run(["bash", "-n", str(out / "sweep.sbatch")]).returncode == 0
    assert json.load(open(out / "sweep.json"))["groups"][0]["tasks"][0]["name"] == "sbd_beta0.4/seeds_0-4"
    assert "28 array tasks" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name", sorted(f for f in os.listdir(os.path.join(CONFIGS, "paper")) if f.endswith(".yaml") and f != "targets.yaml")
)
def test_paper_sweep_files_load_and_match_their_targets(name):
    from sbvae.paper import target_row
    from sbvae.report.tables import row_name

    sweep = load_sweep(os.path.join(CONFIGS, "paper", name))
    assert sweep.groups and all(os.path.isfile(g.config) for g in sweep.groups)
    assert sweep.paper_steps and sweep.steps < sweep.paper_steps  # a short protocol, the paper's stated beside it
    if sweep.targets:  # every report row finds its paper row, so no table silently lacks the paper's numbers
        manifest = sweep.manifest()
        mapped = manifest["targets"].get("rows") or {}
        names = [row_name(group, manifest["pool"], manifest["name"]) for group in manifest["groups"]]
        # A sweep that maps rows explicitly names the ones the paper has numbers for (cpu-study's circles have none).
        for row in set(mapped) if mapped else names:
            assert row in names and target_row(manifest["targets"], row) is not None, row


# -- run states -------------------------------------------------------------------------------------


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_status(folder, **record):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "status.json"), "w") as f:
        json.dump(record, f)


def test_run_state_reads_liveness(tmp_path):
    assert S.run_state(str(tmp_path / "none")).status == "pending"
    write_status(tmp_path / "a", status="running", global_step=7, pid=dead_pid(), hostname=S.socket.gethostname())
    assert S.run_state(str(tmp_path / "a")).status == "interrupted"
    write_status(
        tmp_path / "b",
        status="running",
        global_step=7,
        pid=os.getpid(),
        hostname=S.socket.gethostname(),
        heartbeat=S.time.time(),
    )
    assert S.run_state(str(tmp_path / "b")).status == "running"
    write_status(tmp_path / "c", status="running", pid=1, hostname="elsewhere", heartbeat=S.time.time() - 3600)
    assert S.run_state(str(tmp_path / "c")).status == "interrupted"
    write_status(
        tmp_path / "e",
        status="running",
        pid=os.getpid(),
        hostname=S.socket.gethostname(),
        heartbeat=S.time.time() - 3600,
    )  # alive but silent for an hour: hung, not running
    assert S.run_state(str(tmp_path / "e")).status == "interrupted"
    write_status(tmp_path / "d", status="diverged", global_step=3)
    assert (S.run_state(str(tmp_path / "d")).status, S.run_state(str(tmp_path / "d")).global_step) == ("diverged", 3)


def test_pidless_running_status_is_interrupted_unless_a_live_sweep_holds_the_task(tmp_path):
    out = str(tmp_path)
    write_status(tmp_path / "runs" / "g" / "seed_0", status="running", global_step=4)
    assert S.sweep_run_state(out, "g/seed_0", "runs/g/seed_0").status == "interrupted"
    lock = S.lock_path(out, "g/seed_0")
    os.makedirs(os.path.dirname(lock))
    with open(lock, "w") as f:  # a live process that is not this one: another sbvae-sweep
        json.dump({"pid": os.getppid(), "hostname": S.socket.gethostname()}, f)
    assert S.sweep_run_state(out, "g/seed_0", "runs/g/seed_0").status == "running"
    assert not S.TaskLock(lock).acquire()
    with open(lock, "w") as f:
        json.dump({"pid": dead_pid(), "hostname": S.socket.gethostname()}, f)
    assert S.sweep_run_state(out, "g/seed_0", "runs/g/seed_0").status == "interrupted"
    taken = S.TaskLock(lock)
    assert taken.acquire()  # a stale lock is taken over
    taken.release()
    assert not os.path.exists(lock)


def test_diverged_and_completed_runs_are_not_trained_again(tmp_path, capsys):
    path = write_sweep(
        tmp_path, name="skip", base=QUICKSTART, steps=10, seeds=2, replicas=1, metrics=["mig"], preset="quick"
    )
    sweep = load_sweep(str(path))
    out = tmp_path / "out"
    write_status(out / "runs" / "skip" / "seed_0", status="diverged", global_step=4, step=4)
    run1 = out / "runs" / "skip" / "seed_1"
    write_status(run1, status="completed", global_step=10)
    os.makedirs(run1 / "checkpoints")
    with open(run1 / "checkpoints" / "eval-quick-seed0.json", "w") as f:
        json.dump({"global_step": 10, "preset": "quick", "metrics": {"mig": {"score": 0.1}}}, f)
    outcomes = Runner(sweep, str(out)).run(sweep.tasks())
    assert [(o.action, dict(o.statuses), o.scored) for o in outcomes] == [
        ("done", {"diverged": 1}, 0),
        ("done", {"completed": 1}, 0),
    ]
    printed = capsys.readouterr().out
    assert (
        "[skip/seed_0] nothing to train: 1 diverged" in printed
        and "[skip/seed_1] nothing to train: 1 completed" in printed
    )
    assert not (out / "logs").exists()  # no process was started


def test_jobs_spread_tasks_over_the_visible_gpus(tmp_path, monkeypatch):
    import time

    import sbvae.sweep.runner as runner

    monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1"])
    path = write_sweep(tmp_path, base=QUICKSTART, steps=10, seeds=4, replicas=1)
    sweep = load_sweep(str(path))
    chosen = {}

    def fake_task(self, task, gpu):
        chosen[task.name] = gpu
        time.sleep(0.3)  # all four run at once, each holding its own slot
        return runner.TaskOutcome(task, "done")

    monkeypatch.setattr(Runner, "run_task", fake_task)
    Runner(sweep, str(tmp_path / "out"), jobs=4).run(sweep.tasks())
    assert sorted(chosen.values()) == ["0", "0", "1", "1"] and len(chosen) == 4
    # The slot's GPU reaches the process as CUDA_VISIBLE_DEVICES.
    log = str(tmp_path / "env.log")
    show = [sys.executable, "-c", "import os; print('visible', os.environ['CUDA_VISIBLE_DEVICES'])"]
    assert Runner(sweep, str(tmp_path / "out")).execute(show, log, "1") == 0
    assert "visible 1" in open(log).read()


def test_cpu_jobs_share_the_cores_and_record_their_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = load_sweep(str(write_sweep(tmp_path, base=QUICKSTART, steps=10, seeds=2, replicas=1)))
    show = [sys.executable, "-c", "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"]
    log = str(tmp_path / "env.log")
    two, one = Runner(sweep, str(tmp_path / "out"), jobs=2), Runner(sweep, str(tmp_path / "out"))
    assert (two.cpu_threads(None), one.cpu_threads(None), two.cpu_threads("0")) == (2, 4, None)
    assert two.execute(show, log, None) == 0 and one.execute(show, log, None) == 0
    assert [line for line in open(log).read().splitlines() if line.startswith("threads")] == ["threads 2", "threads 4"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting wins, and is what the task records
    assert two.cpu_threads(None) == 1 and one.cpu_threads(None) == 1


# -- a tiny real sweep: the smoke sweep, 2 seeds as replicas of one process per group, 12 steps ----------

TINY = [
    "--set",
    "steps=12",
    "--set",
    "data.steps_per_epoch=6",
    "--set",
    "data.val_size=32",
    "--set",
    "images.order_images=32",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out"
    sweep_main(["run", SMOKE, "--out", str(out), *TINY])
    return out


def test_smoke_sweep_trains_seeds_as_replicas_and_scores_every_run(smoke, capsys):
    manifest = json.load(open(smoke / "sweep.json"))
    assert [g["name"] for g in manifest["groups"]] == ["sbd", "deconv"] and manifest["steps"] == 12
    for group in ("sbd", "deconv"):
        record = json.load(open(smoke / "tasks" / f"{group}--seeds_0-1.json"))
        assert record["returncode"] == 0 and record["device"].startswith("cpu")
        assert "--replicas 2" in record["command"] and "--seed_everything 0" in record["command"]
        for k in range(2):
            run = smoke / "runs" / group / "seeds_0-1" / f"replica_{k}"
            assert json.load(open(run / "status.json"))["status"] == "completed"
            scores = json.load(open(run / "checkpoints" / "eval-quick-seed0.json"))
            assert scores["global_step"] == 12 and set(scores["metrics"]) == {"elbo", "mig", "factor_vae"}
        first, second = (
            json.load(
                open(smoke / "runs" / group / "seeds_0-1" / f"replica_{k}" / "checkpoints" / "eval-quick-seed0.json")
            )["metrics"]["elbo"]
            for k in range(2)
        )
        assert first != second  # two seeds, two models
    sweep_main(["status", str(smoke)])
    out = capsys.readouterr().out
    assert "4 runs, 4 completed; protocol 12 steps" in out
    assert "sbd     0     completed  12    yes" in out and "sbd     1     completed  12    yes" in out


def test_rerun_of_a_completed_sweep_trains_nothing(smoke, capsys):
    run = smoke / "runs" / "sbd" / "seeds_0-1" / "replica_0"
    before = sorted(os.listdir(run))
    mtime = os.path.getmtime(run / "checkpoints" / "last.ckpt")
    sweep_main(["run", SMOKE, "--out", str(smoke), *TINY])
    out = capsys.readouterr().out
    assert "trained 0 of 2 processes, scored 0 runs; runs 4 completed" in out
    assert sorted(os.listdir(run)) == before
    assert os.path.getmtime(run / "checkpoints" / "last.ckpt") == mtime


def test_interrupted_task_resumes_every_replica_from_its_last_checkpoint(smoke, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(smoke, out)
    task = out / "runs" / "sbd" / "seeds_0-1"
    write_status(task / "replica_1", status="running", global_step=12)  # killed: no live sweep holds it
    sweep_main(["run", SMOKE, "--out", str(out), "--only", "sbd", *TINY, "--set", "steps=18"])
    printed = capsys.readouterr().out
    assert "resuming from runs/sbd/seeds_0-1 (step 12)" in printed
    assert "trained 1 of 1 processes, scored 2 runs" in printed
    for k in range(2):
        run = task / f"replica_{k}"
        assert json.load(open(run / "status.json"))["status"] == "completed"
        assert json.load(open(run / "checkpoints" / "eval-quick-seed0.json"))["global_step"] == 18
        events = EventAccumulator(str(run))
        events.Reload()
        # Logged every 5 steps: 4 and 9 by the first process, 14 by the resumed one, in the same folder
        # (a restart from scratch would have logged 4 and 9 twice).
        assert [e.step for e in events.Scalars("train/loss")] == [4, 9, 14]
    assert json.load(open(out / "runs" / "deconv" / "seeds_0-1" / "replica_0" / "status.json"))["global_step"] == 12
    # --only trained sbd to the new protocol: deconv's runs completed at the old one, and status says so.
    sweep_main(["status", str(out)])
    status = capsys.readouterr().out
    assert "4 runs, 2 completed, 2 short; protocol 18 steps" in status
    assert status.count("completed at 12 of 18 steps: rerun the sweep to train on") == 2


def test_changed_settings_are_refused(smoke, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--out", str(smoke), *TINY, "--set", "model.init_args.lr=0.5"])
    assert exit_info.value.code == 2
    assert "was trained with other settings (overrides ['model.init_args.lr'] differ)" in capsys.readouterr().err


def test_steps_below_the_trained_ones_are_refused(smoke, capsys):
    """A finished run is not 'done' at fewer steps: its report would name a protocol it did not follow."""
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--out", str(smoke), *TINY, "--set", "steps=6"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sbd/seeds_0-1" in err and "trained to step 12, past this sweep's 6 steps" in err
    assert "set steps=12 or more" in err
    assert yaml.safe_load(open(smoke / "sweep.yaml"))["steps"] == 12  # the plan on disk is unchanged


def test_seeds_that_another_process_trained_are_refused_and_its_blocking_is_accepted(smoke, capsys):
    """seeds=3 with replicas left at all of them would train seeds 0 and 1 again as seeds_0-2."""
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--out", str(smoke), *TINY, "--set", "seeds=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sbd/seeds_0-2 would train seeds 0..1 again: sbd/seeds_0-1" in err and "--set replicas=2" in err
    assert not (smoke / "runs" / "sbd" / "seeds_0-2").exists()
    # The advice works: with replicas=2 the old block stays whole and seed 2 is a new process of its own.
    sweep = load_sweep(SMOKE, [*TINY[1::2], "seeds=3", "replicas=2"])
    assert [t.block for t in sweep.tasks()] == ["seeds_0-1", "seed_2"] * 2
    Runner(sweep, str(smoke)).check_settings(sweep.tasks())


@pytest.mark.parametrize("mode", [["--dry-run"], ["--emit", "slurm"], []])
def test_a_misspelt_override_is_refused_before_any_plan(tmp_path, capsys, mode):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["run", SMOKE, "--out", str(out), *TINY, "--set", "model.init_args.betaa=2", *mode])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sweep smoke, group sbd: sbvae-train refuses its settings" in err and "'betaa' is not accepted" in err
    assert not out.exists()  # no folder tied to the typo


def test_a_failing_run_is_reported_with_its_error(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(
            [
                "run",
                SMOKE,
                "--out",
                str(out),
                *TINY,
                "--set",
                "seeds=1",
                "--only",
                "sbd",
                "--set",
                "data.dataset=nosuchdata",
            ]
        )
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "sbvae-train exited 2" in captured.out and "nosuchdata" in captured.out
    assert captured.err.startswith("sbvae-sweep: 1 training process failed; see the logs in")
    assert S.sweep_run_state(str(out), "sbd/seed_0", "runs/sbd/seed_0").status == "failed"


def test_report_of_the_smoke_sweep(smoke):
    from sbvae.cli.report import main as report_main

    report_main([str(smoke), "--out", str(smoke / "report")])
    text = (smoke / "report" / "report.md").read_text()
    assert "paper: Spatial Broadcast VAE, 3 conv layers" in text and "paper: DeConv VAE, MLP 1 layer" in text
    assert "| **sbd** | sbvae | 2 / 2 | 0 | 12 |" in text
    for name in ("mig_histograms.png", "traversals-sbd.png", "traversals-deconv.png"):
        assert (smoke / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(smoke / "report" / "summary.json"))
    sbd = summary["rows"][0]
    migs = [
        json.load(
            open(smoke / "runs" / "sbd" / "seeds_0-1" / f"replica_{k}" / "checkpoints" / "eval-quick-seed0.json")
        )["metrics"]["mig"]["score"]
        for k in range(2)
    ]
    assert sbd["stats"]["mig"]["n"] == 2 and sbd["stats"]["mig"]["mean"] == pytest.approx(sum(migs) / 2, rel=1e-12)
    assert sbd["stats"]["mig"]["std"] == pytest.approx(abs(migs[0] - migs[1]) / 2**0.5, rel=1e-9)  # sample std
    assert sbd["paper"]["mig"] == [0.147, 0.057] and sbd["devices"][0].startswith("cpu")
    # The figures also went to TensorBoard: the traversal into the run's own log.
    events = EventAccumulator(str(smoke / "runs" / "sbd" / "seeds_0-1" / "replica_0"), size_guidance={"images": 0})
    events.Reload()
    assert "report/traversals" in events.Tags()["images"]


def test_cpu_study_in_miniature_reports_its_rows_and_geometry_and_a_seed_reruns_alone(tmp_path):
    """configs/paper/cpu-study.yaml at the smoke test's size: six groups of two seeds trained as replicas, the
    report's geometry of the circles rows, and one seed rerun alone with the report's printed commands gives
    the replica's scores."""
    from sbvae.cli.report import main as report_main

    out = tmp_path / "study"
    sweep_main(
        [
            "run",
            CPU_STUDY,
            "--out",
            str(out),
            "--jobs",
            "2",
            "--set",
            "steps=8",
            "--set",
            "seeds=2",
            "--set",
            "preset=quick",
            "--set",
            "data.steps_per_epoch=8",
            "--set",
            "data.val_size=32",
            "--set",
            "images.every_n_steps=0",
        ]
    )
    report_main([str(out), "--no-tensorboard", "--geometry-points", "4"])
    summary = json.load(open(out / "report" / "summary.json"))
    rows = {row["name"]: row for row in summary["rows"]}
    assert list(rows) == ["xy-sbd", "xy-deconv", "xy-holdout-sbd", "xy-holdout-deconv", "sprites-sbd", "sprites-deconv"]
    assert all(row["scored"] == 2 and row["steps"] == [8] for row in rows.values())
    assert rows["sprites-sbd"]["paper"]["row"] == "sbd" and rows["sprites-deconv"]["paper"]["row"] == "deconv"
    pictures = {f["file"] for f in summary["figures"]}
    assert {f"geometry-{g}.png" for g in ("xy-sbd", "xy-deconv", "xy-holdout-sbd", "xy-holdout-deconv")} <= pictures
    assert "mig_histograms.png" in pictures and not any(p.startswith("geometry-sprites") for p in pictures)
    # SBD and DeConv side by side, one line per dataset (with and without the hold-out), as the paper's Figure 7.
    assert "geometry-side-by-side.png" in pictures
    seed = rows["xy-holdout-sbd"]["seeds"][1]
    assert seed["folder"] == os.path.join("runs", "xy-holdout-sbd", "seeds_0-1", "replica_1") and seed["seed"] == 1
    for command in seed["rerun"]:
        assert subprocess.run(command, shell=True, cwd=tmp_path).returncode == 0, command
    again = json.load(
        open(tmp_path / "runs" / "rerun" / "xy-holdout-sbd" / "seed_1" / "checkpoints" / "eval-quick-seed0.json")
    )
    assert again["global_step"] == 8
    assert again["metrics"]["mig"]["score"] == pytest.approx(seed["scores"]["mig"], abs=1e-6)
    assert again["metrics"]["elbo"]["elbo"] == pytest.approx(seed["scores"]["elbo"], rel=1e-5)


def test_a_failed_run_is_reported_by_its_error_not_the_hint_after_it(tmp_path):
    from sbvae.sweep.runner import last_line

    log = tmp_path / "train.log"
    log.write_text(
        "Seed set to 0\nsbvae-train: error: Parser key \"model\": Option 'betaa' is not accepted\n"
        "(every accepted key: sbvae-train fit --help, or add --print_config)\n"
    )
    assert last_line(str(log)) == "sbvae-train: error: Parser key \"model\": Option 'betaa' is not accepted"
    log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n\n")
    assert last_line(str(log)) == "RuntimeError: boom"
    assert last_line(str(tmp_path / "missing.log")) == ""
