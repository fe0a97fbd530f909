"""The throughput benchmark's own arithmetic and bookkeeping: alternating rounds, the replica memory line, failed rows."""

import importlib.util
import os

import torch

spec = importlib.util.spec_from_file_location(
    "throughput", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "throughput.py")
)
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def test_rounds_alternate_between_rows():
    calls = []
    fns = {"naive": lambda: calls.append("n"), "step": lambda: calls.append("s")}
    seconds = throughput.interleaved(fns, steps=2, warmup=1, rounds=3, device=torch.device("cpu"))
    assert "".join(calls) == "n" + "s" + "nnss" * 3  # warm-up each, then rounds of 2 steps, alternating
    assert set(seconds) == {"naive", "step"} and all(v > 0 for v in seconds.values())


def test_largest_replicas_follows_the_line_through_the_replica_sets_peaks():
    rows = [
        {"model": "sbd", "path": "trainer", "replicas": r, "peak_memory_gib": m}
        for r, m in ((1, 3.0), (15, 8.0), (32, 16.5))
    ]
    rows.append({"model": "sbd", "path": "step", "replicas": 1})
    # 0.5 GiB per replica from 15 replicas at 8 GiB: 15 + (80 - 8) / 0.5 = 159. The single run (no replica
    # program) is off that line: through it and 32 replicas the line would give 178.
    assert throughput.largest_replicas(rows, "sbd", 80.0) == 159
    # With one replica set measured, the single run is the line's other point: 1 + (80 - 3) / (13.5 / 31)
    assert throughput.largest_replicas([rows[0], rows[2]], "sbd", 80.0) == 177
    assert throughput.largest_replicas(rows[:1], "sbd", 80.0) is None  # one point draws no line
    assert throughput.largest_replicas(rows, "deconv", 80.0) is None


def test_a_trainer_row_ends_at_its_last_step_without_the_end_of_fit(monkeypatch):
    """The end of fit (a checkpoint and traversals per replica) is no step: a trainer row skips it, since for
    hundreds of replicas it outlasts a GPU window. The rate counts the timed steps only."""
    import argparse

    from sbvae.callbacks import ImageLogger, LastCheckpoint
    from sbvae.replicas.outputs import ReplicaOutputs

    ended = []
    monkeypatch.setattr(LastCheckpoint, "on_train_end", lambda *a: ended.append("checkpoint"))
    monkeypatch.setattr(ImageLogger, "on_fit_end", lambda *a: ended.append("pictures"))
    monkeypatch.setattr(ReplicaOutputs, "on_train_end", lambda *a: ended.append("replicas' files"))
    steps = []
    real = throughput.StepClock.on_train_batch_end

    def count(self, trainer, *a):
        steps.append(trainer.global_step)
        real(self, trainer, *a)

    monkeypatch.setattr(throughput.StepClock, "on_train_batch_end", count)
    args = argparse.Namespace(
        image_size=32,
        precision="32-true",
        steps_per_epoch=1000,
        val_size=64,
        channels_last=None,
        trainer_warmup=2,
        trainer_steps=3,
    )
    rate, memory = throughput.trainer_images_per_s("sbd", args, torch.device("cpu"), replicas=2)
    assert steps == [1, 2, 3, 4, 5] and ended == []
    assert rate > 0 and memory is None


def test_the_loop_host_time_replaces_only_the_step_and_puts_it_back():
    import argparse

    from sbvae.engine import Engine

    real = Engine.step
    args = argparse.Namespace(image_size=32, precision="32-true", steps_per_epoch=1000, val_size=64, channels_last=None)
    seconds = throughput.loop_host_seconds("sbd", args, torch.device("cpu"), steps=30)
    assert Engine.step is real
    assert 0 < seconds < 0.05  # a no-op step: the loop alone, far below one real 32 px SBD step (~0.1 s here)


def test_a_failed_row_is_recorded_and_the_others_are_kept(tmp_path, monkeypatch):
    """An out-of-memory trainer row (say) leaves the JSON with every other row and the error, and exits 1."""
    import json
    import sys

    import pytest

    def step_rows(name, args, device, counts, rows):
        rows.append({"model": name, "batch": 16, "replicas": 1, "path": "naive", "images_per_s": 10.0})
        rows[-1]["naive_images_per_s"] = 10.0

    def trainer(name, args, device, replicas=1):
        if replicas == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 20.0 * replicas, None

    monkeypatch.setattr(throughput, "step_rows", step_rows)
    monkeypatch.setattr(throughput, "trainer_images_per_s", trainer)
    monkeypatch.setattr(throughput, "loop_host_seconds", lambda *a, **k: 1e-3)
    out = tmp_path / "t.json"
    argv = ["throughput.py", "--device", "cpu", "--quick", "--models", "sbd", "--replicas", "2,3", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="1 measurement"):
        throughput.main()
    info = json.load(open(out))
    assert [(r["path"], r["replicas"]) for r in info["results"]] == [("naive", 1), ("trainer", 1), ("trainer", 3)]
    assert info["results"][2]["images_per_s"] == 60.0 and info["results"][2]["naive_images_per_s"] == 10.0
    assert info["errors"] == [
        {
            "row": "sbd trainer, 2 replica(s)",
            "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        }
    ]
    assert info["trainer_loop_host_us_per_step"] == pytest.approx(1000.0)
    monkeypatch.setattr(sys, "argv", [*argv, "--trainer-only"])
    with pytest.raises(SystemExit):
        throughput.main()
    assert [r["replicas"] for r in json.load(open(out))["results"]] == [3]  # the probe: only the counts asked


def test_a_bf16_run_is_written_beside_the_fp32_file_of_its_device():
    name = lambda *args: os.path.basename(throughput.default_json(*args))
    assert name("cuda", "32-true", False, 64) == "throughput-cuda.json"
    assert name("cuda", "bf16-mixed", False, 64) == "throughput-cuda-bf16.json"  # what gpu_tables.py reads
    assert name("cpu", "32-true", True, 32) == "throughput-cpu-quick.json"
    assert name("cpu", "bf16-mixed", True, 64) == "throughput-cpu-bf16-quick-64px.json"
