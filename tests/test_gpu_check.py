"""benchmarks/gpu_check.py, the one command of a GPU window: its stages, their commands and files cannot rot."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402


def plan(capsys, results, *extra):
    assert gpu_check.main([str(results), "--plan", *extra]) == 0
    assert not results.exists()  # a plan writes nothing
    out = capsys.readouterr().out
    stages, current = {}, None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            stages[current] = []
        elif line.startswith("  $ "):
            stages[current].append(line[4:].split(" "))
    return stages


@pytest.mark.parametrize("rehearse", [False, True])
def test_the_stages_run_in_order_and_name_real_files_flags_and_configs(capsys, tmp_path, rehearse):
    stages = plan(capsys, tmp_path / "results", *(["--rehearse"] if rehearse else []))
    assert tuple(stages) == gpu_check.STAGES == ("install", "pytest", "throughput", "graph-vs-eager", "fig2")
    assert len(gpu_check.RESULT_FILES) <= 8 and "stages.json" in gpu_check.RESULT_FILES
    commands = [c for cmds in stages.values() for c in cmds]
    for cmd in commands:  # every file a command names is in the repository
        for arg in cmd:
            if arg.startswith(ROOT):
                assert os.path.exists(arg), arg
    install = stages["install"][0]
    assert install[1:6] == ["-m", "pip", "install", "--no-index", "--no-deps"] and "--target" in install
    # throughput.py accepts every flag the stage passes
    help_text = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--help"], capture_output=True, text=True
    ).stdout
    for cmd in stages["throughput"]:
        for flag in (a for a in cmd if a.startswith("--")):
            assert flag in help_text, flag
        assert cmd[cmd.index("--device") + 1] == ("cpu" if rehearse else "cuda")
    assert any("bf16-mixed" in cmd for cmd in stages["throughput"])
    # sbvae-train parses the graph-vs-eager runs (--print_config validates every key, trains nothing)
    from sbvae.cli.train import main as train_main

    modes = []
    for cmd in stages["graph-vs-eager"]:
        args = cmd[cmd.index("fit") :]
        modes.append(args[args.index("--model.init_args.step_mode") + 1])
        with pytest.raises(SystemExit) as done:
            train_main(args + ["--print_config"])
        assert done.value.code in (0, None)
    assert modes == (["auto", "eager"] if rehearse else ["graph", "eager"])
    # the sweep stage's --set items load
    from sbvae.sweep.spec import load_sweep

    (sweep_cmd, report_cmd) = stages["fig2"]
    sets = [sweep_cmd[i + 1] for i, a in enumerate(sweep_cmd) if a == "--set"]
    sweep = load_sweep(sweep_cmd[sweep_cmd.index("run") + 1], sets)
    assert list(sweep.metrics) == ["elbo", "mig"]
    if not rehearse:
        assert sweep.name == "fig2" and {len(t.seeds) for t in sweep.tasks()} == {15}
    assert report_cmd[1:3] == ["-m", "sbvae.cli.report"]


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["r", "--only", "pytest,warp"])
    assert "unknown stage(s) warp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["r", "--budget", "0"])


def test_a_missing_wheel_stops_before_anything_runs(tmp_path, capsys):
    (tmp_path / "wheels").mkdir()
    assert gpu_check.main([str(tmp_path / "results"), "--wheels", str(tmp_path / "wheels"), "--rehearse"]) == 1
    assert "no wheel of sbvae, jsonargparse" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "results")) == ["stages.json"]


def test_the_wheel_script_fetches_what_the_install_stage_needs():
    script = open(os.path.join(ROOT, "benchmarks", "download_wheels.sh")).read()
    for package in gpu_check.PACKAGES[1:]:
        assert re.search(package.replace("_", "[-_]"), script), package
    assert "--python-version 3.12" in script and "manylinux" in script and "pip wheel" in script


def test_the_install_makes_the_installed_sbvae_the_checkouts(tmp_path):
    """A wheel built before the last change is overwritten by the checkout's modules, and its files listed."""
    files = gpu_check.source_files()
    assert files["sbvae/engine.py"] == os.path.join(ROOT, "sbvae", "engine.py")
    assert files["sbvae/metrics/mig.py"] == os.path.join(ROOT, "metrics", "mig.py")  # pyproject's package-dir
    assert files["sbvae/replicas/stacked.py"] == os.path.join(ROOT, "sbvae", "replicas", "stacked.py")
    site = tmp_path / "site"
    for installed, source in files.items():  # a fresh install of today's wheel...
        (site / installed).parent.mkdir(parents=True, exist_ok=True)
        (site / installed).write_bytes(open(source, "rb").read())
    (site / "sbvae" / "engine.py").write_text("old = True\n")  # ...but one module changed since, one is new
    (site / "sbvae" / "metrics" / "irs.py").unlink()
    assert gpu_check.sync_sources(str(site)) == ["sbvae/engine.py", "sbvae/metrics/irs.py"]
    assert (site / "sbvae" / "engine.py").read_bytes() == open(files["sbvae/engine.py"], "rb").read()
    assert gpu_check.sync_sources(str(site)) == []


def test_the_figures_are_printed_from_the_stages_files_even_a_rehearsals(tmp_path):
    """The call's output carries the owed figures against the goals, in case its files never come back."""
    row = lambda path, rate: {"model": "sbd", "batch": 16, "replicas": 1, "path": path, "images_per_s": rate}
    rehearsal = {
        "device": "cpu (2 cores)",
        "precision": "32-true",
        "results": [row("naive", 100.0), row("trainer", 150.0)],
    }
    (tmp_path / "throughput-cuda.json").write_text(json.dumps(rehearsal))
    (tmp_path / "throughput-cuda-bf16.json").write_text("{not json")  # a file cut off mid-write is skipped
    lines = gpu_check.figures(str(tmp_path))
    assert "| one run, sbvae-train's loop, fp32 | 150 img/s | 1.50x | >= 10,000 img/s and >= 3x: **not met** |" in lines
    assert gpu_check.figures(str(tmp_path / "none")) == []
