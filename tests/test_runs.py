"""Runs that survive: status you can trust, checkpoints on time and on signals, full disks, no code from files."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

import run_probes
from sbvae import runs
from sbvae.cli.evaluate import main as evaluate
from test_training import TINY, fit, run_dirs

LONG = ["--trainer.max_steps", "100000", "--data.steps_per_epoch", "50"]  # stopped from outside, never validated


def checkpoint_files(run):
    return sorted(os.listdir(runs.checkpoint_dir(run)))


def saved_steps(run):
    return torch.load(runs.last_checkpoint(run), map_location="cpu", weights_only=True)["global_step"]


# -- status.json and run_state ------------------------------------------------------------------


def test_a_non_finite_diverged_value_is_strict_json(tmp_path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    for value, written in ((float("nan"), "nan"), (-float("inf"), "-inf")):
        folder = tmp_path / written
        folder.mkdir()
        runs.write_status(folder, "diverged", 3, started=time.time(), step=3, value=value, message="m")
        record = json.loads((folder / runs.STATUS_FILE).read_text(), parse_constant=refuse)
        assert record["status"] == "diverged" and record["step"] == 3 and record["value"] == written


def test_run_state_believes_running_only_with_a_live_process_and_a_fresh_heartbeat(tmp_path):
    assert runs.run_state(tmp_path)["status"] == "unknown"
    record = runs.write_status(tmp_path, "running", 12, started=time.time())
    assert record["pid"] == os.getpid() and record["hostname"] == socket.gethostname()
    assert runs.run_state(tmp_path) == record  # this process is alive

    def rewrite(**changes):
        with open(tmp_path / runs.STATUS_FILE, "w") as f:
            json.dump({**record, **changes}, f)
        return runs.run_state(tmp_path)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = rewrite(pid=gone.pid)
    assert state["status"] == "interrupted" and f"process {gone.pid}" in state["reason"]
    assert rewrite(hostname="elsewhere", pid=gone.pid)["status"] == "running"  # another host: the heartbeat decides
    state = rewrite(hostname="elsewhere", heartbeat=time.time() - runs.STALE_AFTER_SECONDS - 1)
    assert state["status"] == "interrupted" and "no heartbeat" in state["reason"]
    for final in ("completed", "diverged", "failed"):
        assert rewrite(status=final, pid=gone.pid)["status"] == final


def test_heartbeat_refreshes_status_while_training(tmp_path, config_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_SECONDS", 0.05)
    run_probes.SEEN.clear()
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        *LONG,
        "--trainer.max_steps",
        "3",
        "--trainer.callbacks+=run_probes.SlowSteps",
        "--trainer.callbacks.seconds=0.3",
    )
    beats = run_probes.SEEN
    assert [b["status"] for b in beats] == ["running"] * 3
    # No step writes the file: the background thread does, so the heartbeat moves between steps.
    assert beats[0]["heartbeat"] < beats[1]["heartbeat"] < beats[2]["heartbeat"]
    assert [b["global_step"] for b in beats] == [1, 2, 3]


def test_a_killed_run_reads_interrupted_and_running_again_once_resumed(tmp_path, config_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config_path("quickstart.yaml"),
        *TINY,
        "--trainer.max_steps",
        "100000",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = os.path.join(tmp_path, "quickstart", "version_0")
    deadline = time.time() + 240
    while not os.path.exists(runs.last_checkpoint(run)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # kill -9: no handler runs, status.json keeps saying "running"
    proc.wait()
    assert os.path.exists(runs.last_checkpoint(run)), proc.stderr.read().decode()[-2000:]
    assert runs.read_status(run)["status"] == "running"
    state = runs.run_state(run)
    assert state["status"] == "interrupted" and state["pid"] == proc.pid and "is gone" in state["reason"]

    step = saved_steps(run)
    run_probes.SEEN.clear()
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        "--ckpt_path",
        runs.last_checkpoint(run),
        "--trainer.max_steps",
        str(step + 2),
        "--trainer.callbacks+=run_probes.StatusProbe",
    )
    (seen,) = run_probes.SEEN
    assert seen["status"] == "running" and seen["pid"] == os.getpid() and seen["global_step"] == step
    assert run_dirs(tmp_path) == [run]
    assert runs.run_state(run)["status"] == "completed" and saved_steps(run) == step + 2


# -- last.ckpt on time and on signals ------------------------------------------------------------


@pytest.mark.parametrize("minutes, expected", [(10, [3, 6, 7]), (0, [7])])
def test_time_based_checkpoints(tmp_path, config_path, monkeypatch, minutes, expected):
    run_probes.CLOCK[0] = 0.0
    writes = []
    save = L.Trainer.save_checkpoint

    def spy(trainer, filepath, *args, **kwargs):
        if os.path.basename(filepath).startswith(".last"):
            writes.append(trainer.global_step)
        return save(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr("sbvae.callbacks.monotonic", lambda: run_probes.CLOCK[0])
    monkeypatch.setattr(L.Trainer, "save_checkpoint", spy)
    fit(
        config_path("quickstart.yaml"),
        tmp_path,
        *LONG,
        "--trainer.max_steps",
        "7",
        "--trainer.callbacks+=run_probes.Clock",
        "--last_checkpoint.every_n_minutes",
        str(minutes),
    )
    assert writes == expected
    assert saved_steps(run_dirs(tmp_path)[0]) == 7


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_last_checkpoint_and_stops(tmp_path, config_path, capsys, signum):
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as exit_info:
        fit(
            config_path("quickstart.yaml"),
            tmp_path,
            *LONG,
            "--trainer.callbacks+=run_probes.SendSignal",
            f"--trainer.callbacks.signum={int(signum)}",
            "--trainer.callbacks.at_step=4",
        )
    assert exit_info.value.code == 128 + signum
    assert signal.getsignal(signum) == before  # the handler was only borrowed
    (run,) = run_dirs(tmp_path)
    assert saved_steps(run) == 5  # the step under way when the signal came was finished and saved
    assert checkpoint_files(run) == ["last.ckpt"]  # no validation ran: the signal alone wrote it
    status = runs.run_state(run)
    assert status["status"] == "interrupted" and status["signal"] == signum.name and status["global_step"] == 5
    err = capsys.readouterr().err
    assert f"sbvae-train: {signum.name} stopped training at step 5" in err and "--ckpt_path" in err
    assert "Traceback" not in err


def test_signal_under_ddp_saves_once_at_an_agreed_step_and_resumes(tmp_path, config_path):
    """SIGTERM reaches both processes of a 2-process DDP run; they agree on the next agreement step
    (every AGREE_EVERY_N_STEPS), process 0 writes one last.ckpt, both exit 128+15, and --ckpt_path
    continues the run in the same folder."""
    from sbvae.callbacks import AGREE_EVERY_N_STEPS

    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "sbvae.cli.train",
        "fit",
        "--config",
        config_path("quickstart.yaml"),
        *TINY,
        *LONG,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
    ]
    done = subprocess.run(
        cmd
        + [
            "--trainer.callbacks+=run_probes.SignalAllProcesses",
            "--trainer.callbacks.signum=15",
            "--trainer.callbacks.at_step=4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert saved_steps(run) == AGREE_EVERY_N_STEPS and checkpoint_files(run) == ["last.ckpt"]
    assert f"SIGTERM stopped training at step {AGREE_EVERY_N_STEPS}" in done.stderr
    assert runs.run_state(run)["status"] == "interrupted"
    done = subprocess.run(
        cmd + ["--trainer.max_steps", str(AGREE_EVERY_N_STEPS + 2), "--ckpt_path", run],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_dirs(tmp_path) == [run] and saved_steps(run) == AGREE_EVERY_N_STEPS + 2
    assert runs.run_state(run)["status"] == "completed"


def test_no_checkpoint_is_written_after_divergence(tmp_path, config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(
            config_path("quickstart.yaml"),
            tmp_path,
            "--model.class_path",
            "run_probes.DivergedOnDevice",
            "--model.init_args.bad_step",
            "4",
        )
    assert exit_info.value.code == 3
    (run,) = run_dirs(tmp_path)
    assert saved_steps(run) == 3  # the validation at step 6 found the divergence before writing anything
    assert not [f for f in checkpoint_files(run) if "step=6" in f or f.endswith(".partial")]
    status = runs.run_state(run)
    assert status["status"] == "diverged" and status["step"] == 4
    assert "diverged at step 4" in capsys.readouterr().err


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, config_path, capsys, monkeypatch):
    fit(config_path("quickstart.yaml"), tmp_path)
    (run,) = run_dirs(tmp_path)
    last = runs.last_checkpoint(run)
    before, files = open(last, "rb").read(), checkpoint_files(run)

    def full_disk(self, checkpoint, path, storage_options=None):
        with open(path, "wb") as f:
            f.write(b"the first half of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--trainer.max_steps", "9", "--ckpt_path", last)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert message.startswith(
        f"sbvae-train: cannot write last.ckpt in {runs.checkpoint_dir(run)} (No space left on device)"
    )
    assert "free space" in message and "--ckpt_path" in message and "Traceback" not in err
    assert open(last, "rb").read() == before and checkpoint_files(run) == files  # nothing half-written left
    status = runs.run_state(run)
    assert status["status"] == "failed" and "No space left" in status["message"]


# -- no code from files --------------------------------------------------------------------------


class Payload:
    """Unpickling it with weights_only=False creates a file: the stand-in for a hidden program."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the file does what it says: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_process_that_could_not_write_its_part_stops_the_rename(tmp_path):
    """Process 0 renames the set's new last.ckpt into place only when every process wrote its part of the
    checkpoint (a replica share's files): else the step would be committed with a part missing."""
    import types

    from sbvae.callbacks import LastCheckpoint
    from sbvae.errors import SBVAEError

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"the previous checkpoint")
    committed = []
    votes = iter([True])  # the first vote: another process failed

    trainer = types.SimpleNamespace(
        log_dir=str(tmp_path),
        is_global_zero=True,
        save_checkpoint=lambda path, weights_only: open(path, "wb").write(b"the new checkpoint"),
        strategy=types.SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision or next(votes)),
        callbacks=[types.SimpleNamespace(commit_checkpoint=lambda: committed.append(True))],
    )
    with pytest.raises(SBVAEError, match="another process could not write its part of this checkpoint"):
        LastCheckpoint()._write(trainer)
    assert (folder / "last.ckpt").read_bytes() == b"the previous checkpoint"
    assert sorted(os.listdir(folder)) == ["last.ckpt"] and not committed  # the unfinished file is gone


def test_train_refuses_a_checkpoint_that_would_run_code(tmp_path, config_path, capsys, crafted):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_info:
        fit(config_path("quickstart.yaml"), tmp_path, "--ckpt_path", str(path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"sbvae-train: refusing to load {path}:") and "Traceback" not in err
    assert not marker.exists() and not run_dirs(tmp_path)  # nothing ran, no run folder was started


def test_eval_refuses_a_checkpoint_that_would_run_code(capsys, crafted):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_info:
        evaluate(["--ckpt", str(path), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sbvae-eval: refusing to load {path}:") and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_eval_builds_only_sbvae_models(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "names-a-function.ckpt"  # plain data that names a callable and its arguments
    torch.save(
        {
            "sbvae_model_class": "builtins.open",
            "hyper_parameters": {"file": str(marker), "mode": "w"},
            "datamodule_hyper_parameters": {},
            "state_dict": {},
        },
        path,
    )
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(path), "--device", "cpu"])
    assert f"refusing to build {path}: its model class 'builtins.open'" in capsys.readouterr().err
    assert not marker.exists()


def test_eval_says_a_file_that_is_no_checkpoint_is_none(tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("# not a checkpoint\n")
    with pytest.raises(SystemExit) as exit_info:
        evaluate(["--ckpt", str(notes), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"sbvae-eval: {notes} is not a checkpoint (not a file torch.save wrote): " + (
        "pass runs/NAME/version_K/checkpoints/last.ckpt or a run folder.\n"
    )
