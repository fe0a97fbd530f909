"""benchmarks/gpu_tables.py: the docs' GPU figures come from the committed throughput files, and only from them."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_tables  # noqa: E402

H200 = {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "lightning": "2.6.6", "image_size": 64}


def sbd(path, replicas, rate, **extra):
    return {"model": "sbd", "batch": 16, "replicas": replicas, "path": path, "images_per_s": rate, **extra}


def checkout(tmp_path, **files):
    """A copy of the docs and configs the script rewrites, with these throughput files committed."""
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "configs"), root / "configs")
    (root / "docs").mkdir()
    shutil.copy(os.path.join(ROOT, "docs", "performance.md"), root / "docs")
    results = root / "benchmarks" / "results"
    results.mkdir(parents=True)
    for name, data in files.items():
        (results / f"throughput-{name.replace('_', '-')}.json").write_text(json.dumps(data))
    return root


def block(path, name):
    lines = path.read_text().split("\n")
    start = lines.index(gpu_tables.START.format(name))
    return lines[start + 1 : lines.index(gpu_tables.END, start)]


def outside(path):
    """The file's lines with every generated block emptied."""
    lines, kept, inside = path.read_text().split("\n"), [], False
    for line in lines:
        if line == gpu_tables.END:
            inside = False
        if not inside:
            kept.append(line)
        if line.startswith("<!-- gpu_tables: "):
            inside = True
    return kept


def test_the_committed_docs_match_the_committed_results(capsys):
    assert gpu_tables.main(["--check"]) == 0, capsys.readouterr().out


def test_a_gpu_run_becomes_the_figures_against_the_goals_and_the_sweeps_device_time(tmp_path, capsys):
    fp32 = dict(
        H200,
        precision="32-true",
        gpu_memory_gib=139.8,
        largest_replicas_that_fit={"sbd": 270},
        results=[
            sbd("naive", 1, 3000.0),
            sbd("step", 1, 12600.0),
            sbd("trainer", 1, 9500.0, peak_memory_gib=1.2),  # 3.17x the plain loop, but under 10,000
            sbd("step", 15, 47000.0),
            sbd("trainer", 15, 45000.0, peak_memory_gib=8.0),
            sbd("trainer", 32, 60000.0, peak_memory_gib=16.5),
        ],
        errors=[],
    )
    bf16 = dict(H200, precision="bf16-mixed", results=[sbd("naive", 1, 4000.0), sbd("trainer", 1, 30000.0)])
    root = checkout(tmp_path, cuda=fp32, cuda_bf16=bf16)
    assert gpu_tables.main(["--check", "--root", str(root)]) == 1
    assert "performance.md: its generated blocks differ" in capsys.readouterr().out
    assert gpu_tables.main(["--root", str(root)]) == 0
    gpu = "\n".join(block(root / "docs" / "performance.md", "gpu"))
    assert "Measured on one NVIDIA H200 with torch 2.11.0+cu130" in gpu
    assert "| one run, sbvae-train's loop, fp32 | 9,500 img/s | 3.17x | >= 10,000 img/s and >= 3x: **not met** |" in gpu
    assert "| one run, sbvae's step alone, fp32 | 12,600 img/s | 4.20x | - |" in gpu
    assert "| one run, sbvae-train's loop, bf16-mixed | 30,000 img/s | 7.50x | - |" in gpu  # its own plain loop
    assert "| one run, sbvae's step alone, bf16-mixed | not measured | - | - |" in gpu
    assert "| 15 replicas, sbvae-train's loop, fp32, peak 8.0 GiB reserved | 45,000 img/s | 15.00x | " in gpu
    # The goal is the real loop's; the vmapped step alone is shown after it, without one.
    assert (
        ">= 50,000 img/s: **not met** |\n| 15 replicas, sbvae's step alone, fp32 | 47,000 img/s | 15.67x | - |\n" in gpu
    )
    assert (
        "| 32 replicas, sbvae-train's loop, fp32, peak 16.5 GiB reserved | 60,000 img/s | 20.00x | >= 50,000 img/s: **met** |"
        in gpu
    )
    # (16.5 - 8.0) / (32 - 15) GiB per replica
    assert (
        "- Memory per replica: 0.500 GiB, by the peaks of 15 and 32 replicas; throughput.py's line through them "
        "predicts about 270 replicas in the card's 140 GiB." in gpu
    )
    assert "- Not measured yet: throughput-cuda-largest.json." in gpu
    assert "still owed" not in gpu

    table = "\n".join(block(root / "configs" / "paper" / "README.md", "device-time"))
    # Figure 2: two processes of 15 seeds x 20,000 steps x 16 images. SBD's is timed by the 15-replica row
    # (4.8e6 / 45,000 = 107 s); no GPU row measures DeConv, which keeps 1,470 img/s (3,265 s): 56 min in all.
    assert (
        "| [fig2-vae-mig.yaml](fig2-vae-mig.yaml) | SBD vs DeConv VAE, colored sprites, 15 seeds | 30 | 56 min |"
        in table
    )
    assert (
        "measured in throughput-cuda.json (NVIDIA H200)" in table and "No GPU row measures coordconv, deconv" in table
    )
    # A measured CPU wall time is kept as written, and the rest of the file is untouched.
    assert "| 30 | 61.5 min on 2 CPU cores (`--jobs 2`, measured) |" in table
    for relative in ("configs/paper/README.md", "docs/performance.md"):
        assert outside(root / relative) == outside(Path(ROOT) / relative)
    assert gpu_tables.main(["--check", "--root", str(root)]) == 0  # written once, then in step


def test_failed_rows_are_listed(tmp_path):
    largest = dict(
        H200,
        precision="32-true",
        timing={"trainer_steps": 5},
        results=[sbd("trainer", 243, 70000.0, peak_memory_gib=120.3)],
        errors=[{"row": "sbd trainer, 243 replica(s)", "error": "OutOfMemoryError: CUDA out of memory"}],
    )
    root = checkout(tmp_path, cuda_largest=largest)
    assert gpu_tables.main(["--root", str(root)]) == 0
    gpu = "\n".join(block(root / "docs" / "performance.md", "gpu"))
    assert (
        # a 5-step probe shows what fits; its rate is not held against the goal
        "| 243 replicas, sbvae-train's loop (the largest-count probe, 5 steps), fp32, peak 120.3 GiB reserved | 70,000 img/s | - | - |"
        in gpu
    )
    assert "- Failed in throughput-cuda-largest.json: sbd trainer, 243 replica(s): OutOfMemoryError" in gpu
    assert "| one run, sbvae-train's loop, fp32 | not measured |" in gpu


def test_memory_per_replica_needs_two_replica_sets_whose_peaks_grow():
    sets = lambda *peaks: {"results": [sbd("trainer", r, 1.0, peak_memory_gib=m) for r, m in peaks]}
    assert gpu_tables.memory_per_replica(sets((1, 2.0), (15, 8.0), (32, 16.5))) == (0.5, 15, 32)
    assert gpu_tables.memory_per_replica(sets((1, 2.0), (15, 8.0))) is None  # the single run is off the line
    assert gpu_tables.memory_per_replica(sets((15, 8.0), (32, 7.9))) is None
    assert gpu_tables.memory_per_replica(None) is None


BAD_FILES = {
    "rehearsal": (dict(H200, device="cpu (2 cores, x86_64, 1 threads)", results=[]), "a rehearsal's file, not a GPU's"),
    "precision": (
        dict(H200, precision="bf16-mixed", results=[sbd("trainer", 1, 9.0)]),
        "holds bf16-mixed figures, but its name is for 32-true ones",
    ),
    "array": ([1, 2], "is not a throughput file of benchmarks/throughput.py (not a JSON object)"),
    "row": (dict(H200, results=[{"model": "sbd", "path": "naive"}]), "(a row without images_per_s"),
    "errors": (dict(H200, results=[], errors=["OOM"]), "(errors is not a list of objects)"),
}


@pytest.mark.parametrize("what", [*BAD_FILES, "devices", "markers"])
def test_a_bad_file_or_lost_markers_are_one_error_and_change_nothing(tmp_path, capsys, what):
    if what in BAD_FILES:
        data, says = BAD_FILES[what]
        root = checkout(tmp_path, cuda=data)
    elif what == "devices":
        h100 = dict(H200, device="NVIDIA H100 80GB HBM3", precision="bf16-mixed", results=[])
        root = checkout(tmp_path, cuda=dict(H200, results=[]), cuda_bf16=h100)
        says = "come from different devices (NVIDIA H100 80GB HBM3, NVIDIA H200)"
    else:
        root = checkout(tmp_path)
        path = root / "docs" / "performance.md"
        path.write_text(path.read_text().replace(gpu_tables.END, ""))
        says = "has no block <!-- gpu_tables: gpu --> ... <!-- /gpu_tables -->"
    before = (root / "docs" / "performance.md").read_text()
    assert gpu_tables.main(["--root", str(root)]) == 2
    assert says in capsys.readouterr().err
    assert (root / "docs" / "performance.md").read_text() == before


def test_take_copies_a_gpu_checks_throughput_files_and_rewrites_the_docs(tmp_path, capsys):
    results = tmp_path / "r"
    results.mkdir()
    fp32 = dict(H200, precision="32-true", results=[sbd("naive", 1, 3000.0), sbd("trainer", 1, 12000.0)])
    (results / "throughput-cuda.json").write_text(json.dumps(fp32))
    (results / "stages.json").write_text("{}")  # the check's other files stay where they are
    root = checkout(tmp_path)
    assert gpu_tables.main(["--take", str(results), "--root", str(root)]) == 0
    assert sorted(os.listdir(root / "benchmarks" / "results")) == ["throughput-cuda.json"]
    assert "| one run, sbvae-train's loop, fp32 | 12,000 img/s | 4.00x | >= 10,000 img/s and >= 3x: **met** |" in (
        "\n".join(block(root / "docs" / "performance.md", "gpu"))
    )
    # A rehearsal's folder is refused whole: nothing copied, nothing rewritten.
    rehearsal = tmp_path / "rehearsal"
    rehearsal.mkdir()
    (rehearsal / "throughput-cuda-bf16.json").write_text(json.dumps(dict(fp32, device="cpu (2 cores)")))
    before = (root / "docs" / "performance.md").read_text()
    assert gpu_tables.main(["--take", str(rehearsal), "--root", str(root)]) == 2
    assert "a rehearsal's file, not a GPU's" in capsys.readouterr().err
    assert sorted(os.listdir(root / "benchmarks" / "results")) == ["throughput-cuda.json"]
    assert (root / "docs" / "performance.md").read_text() == before
    assert gpu_tables.main(["--take", str(tmp_path / "r" / "nothing-here"), "--root", str(root)]) == 2
    assert "holds none of throughput-cuda.json" in capsys.readouterr().err
    assert gpu_tables.main(["--take", str(root / "benchmarks" / "results"), "--root", str(root)]) == 2
    assert "is benchmarks/results itself: run without --take" in capsys.readouterr().err


def test_take_replaces_the_last_checks_files_whole(tmp_path, capsys):
    """A new check without a largest-count probe must not keep the last check's probe, from another card."""
    h100 = dict(H200, device="NVIDIA H100 80GB HBM3", precision="32-true")
    root = checkout(
        tmp_path,
        cuda=dict(h100, results=[sbd("trainer", 1, 5000.0)]),
        cuda_largest=dict(h100, results=[sbd("trainer", 140, 60000.0, peak_memory_gib=70.0)]),
    )
    results = tmp_path / "r"
    results.mkdir()
    (results / "throughput-cuda.json").write_text(
        json.dumps(
            dict(H200, precision="32-true", largest_replicas_that_fit=None, results=[sbd("trainer", 1, 12000.0)])
        )
    )
    assert gpu_tables.main(["--take", str(results), "--root", str(root)]) == 0
    assert "removed benchmarks/results/throughput-cuda-largest.json" in capsys.readouterr().out
    assert sorted(os.listdir(root / "benchmarks" / "results")) == ["throughput-cuda.json"]
    gpu = "\n".join(block(root / "docs" / "performance.md", "gpu"))
    assert "NVIDIA H200" in gpu and "H100" not in gpu and "140 replicas" not in gpu
    assert "- Memory per replica: not measured (it needs two replica sets whose peaks grow with the count)." in gpu
