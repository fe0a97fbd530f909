"""Run folders: their layout, their status file, and safe reading and atomic writing of their files.

    runs/NAME/version_K/                 one run (the TensorBoardLogger's save_dir/name/version)
        events.out.tfevents.*            TensorBoard scalars and pictures (a resumed run appends here)
        config.yaml, hparams.yaml        the configuration of the latest start
        status.json                      running, completed, interrupted, diverged or failed
        checkpoints/last.ckpt            the latest state
        checkpoints/best-step=N.ckpt     the best by val/elbo
        checkpoints/eval-P-seedS.json    sbvae-eval's scores of last.ckpt
    runs/NAME/version_K/replica_R/       a replica-parallel run: one such folder per replica

Plain functions on paths, so sweeps, reports and replicas read runs without a Trainer.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import pickle
import re
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sbvae.errors import SBVAEError

CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
STATUS_FILE = "status.json"
HEARTBEAT_SECONDS = 60.0
# A running process refreshes its heartbeat every minute even during long validations (a thread does it),
# so five silent minutes mean the process is gone or frozen.
STALE_AFTER_SECONDS = 300.0
REPLICA_FOLDER = re.compile(r"replica_(\d+)")
BEST_CHECKPOINT = re.compile(r"best-step=(\d+)(-v\d+)?\.ckpt")  # ModelCheckpoint's name for the best by val/elbo


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` only if the block completes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- layout -------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def last_checkpoint(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, CHECKPOINTS, LAST_CHECKPOINT)


def is_run_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a run folder: sbvae-train wrote its status or TensorBoard events there."""
    if not os.path.isdir(folder):
        return False
    return any(name == STATUS_FILE or name.startswith("events.out.tfevents") for name in os.listdir(folder))


def run_dir_of(ckpt_path: str | os.PathLike) -> str | None:
    """The run folder a checkpoint belongs to (the parent of its ``checkpoints/``), or None for a loose file."""
    folder = os.path.dirname(os.path.abspath(ckpt_path))
    if os.path.basename(folder) != CHECKPOINTS:
        return None
    run = os.path.dirname(folder)
    return run if is_run_dir(run) else None


def replica_dirs(run_dir: str | os.PathLike) -> list[str]:
    """The ``replica_R`` folders of a replica-parallel run, in replica order (empty for a single run)."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := REPLICA_FOLDER.fullmatch(name))]
    return [os.path.join(run_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(run_dir, name))]


def checkpoints_to_score(path: str | os.PathLike) -> list[str]:
    """The checkpoints ``sbvae-eval --ckpt PATH`` scores: the file itself, or a run folder's last.ckpt
    (a replica-parallel run: every replica's)."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise SBVAEError(
            f"checkpoint {path} does not exist: pass --ckpt runs/NAME/version_K/checkpoints/last.ckpt "
            "or a run folder runs/NAME/version_K."
        )
    folders = replica_dirs(path) or [path]
    found = [last_checkpoint(f) for f in folders if os.path.isfile(last_checkpoint(f))]
    if not found:
        raise SBVAEError(
            f"{path} holds no {CHECKPOINTS}/{LAST_CHECKPOINT} (nor replica_*/{CHECKPOINTS}/{LAST_CHECKPOINT}): "
            "pass a run folder written by sbvae-train, or a checkpoint file."
        )
    return found


def checkpoint_to_load(path: str | os.PathLike, replica: int | None = None, which: str = "last") -> str:
    """The checkpoint ``sbvae.load(path)`` builds: the file itself, or a run folder's last.ckpt (``which="best"``:
    its best by val/elbo); a replica-parallel run's folder takes ``replica=K``, as its folder replica_K would."""
    path = str(path)
    if which not in ("last", "best"):
        raise SBVAEError(f"which={which!r} names no checkpoint of a run folder: use 'last' or 'best'.")
    if os.path.isfile(path):
        if replica is not None:
            raise SBVAEError(
                f"{path} is a checkpoint file, not a replica-parallel run folder: leave out replica={replica}."
            )
        return path
    if not os.path.isdir(path):
        raise SBVAEError(
            f"{path} does not exist: pass a checkpoint file or a run folder runs/NAME/version_K written by sbvae-train."
        )
    replicas = replica_dirs(path)
    if replicas and replica is None:
        raise SBVAEError(
            f"{path} is a replica-parallel run of {len(replicas)} replicas: pass replica=K (one of "
            f"{', '.join(os.path.basename(r).removeprefix('replica_') for r in replicas)}), or its folder replica_K."
        )
    if replica is not None:
        folder = os.path.join(path, f"replica_{replica}")
        if folder not in replicas:
            raise SBVAEError(
                f"{path} holds no replica_{replica}: pass a replica it holds "
                f"({', '.join(os.path.basename(r) for r in replicas) or 'it is a single run: leave out replica'})."
            )
        path = folder
    if which == "last":
        found = last_checkpoint(path)
        if not os.path.isfile(found):
            raise SBVAEError(
                f"{path} holds no {CHECKPOINTS}/{LAST_CHECKPOINT}: pass a run folder written by sbvae-train, or a checkpoint file."
            )
        return found
    folder = checkpoint_dir(path)
    best = [
        (int(m.group(1)), name)
        for name in (os.listdir(folder) if os.path.isdir(folder) else [])
        if (m := BEST_CHECKPOINT.fullmatch(name))
    ]
    if not best:
        raise SBVAEError(
            f"{path} kept no best checkpoint ({CHECKPOINTS}/best-step=N.ckpt; checkpoint.save_top_k was 0): "
            "use which='last'."
        )
    return os.path.join(folder, max(best)[1])


def eval_output(ckpt_path: str | os.PathLike, preset: str, seed: int) -> str:
    """Where sbvae-eval writes its JSON by default: beside the checkpoint."""
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), f"eval-{preset}-seed{seed}.json")


# -- reading checkpoints ------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint as plain data: tensors, numbers, strings and containers only (``weights_only=True``).

    A file that needs anything else to unpickle (a class, a function: possibly code someone hid in it)
    is refused before any of it runs.
    """
    if not os.path.isfile(path):
        raise SBVAEError(f"checkpoint {path} does not exist: pass runs/NAME/version_K/checkpoints/last.ckpt.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):  # every torch.save since torch 1.6 writes a zip archive
            raise SBVAEError(
                f"{path} is not a checkpoint (not a file torch.save wrote): pass "
                "runs/NAME/version_K/checkpoints/last.ckpt or a run folder."
            ) from error
        raise SBVAEError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain data, which could run "
            "code when unpickled, so nothing in it was run; use a checkpoint written by sbvae-train."
        ) from error
    except Exception as error:  # truncated, or not a torch file at all
        raise SBVAEError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}); is the file complete?"
        ) from error


def model_class(checkpoint: dict, path: str | os.PathLike) -> type:
    """The model class a checkpoint names (``sbvae_model_class``), provided it is one of sbvae's LightningModules.

    The name is text from the file: importing and calling whatever it names would run code chosen by the file.
    """
    name = checkpoint.get("sbvae_model_class")
    if not isinstance(name, str):
        run = run_dir_of(path)
        if run is not None and replica_dirs(run):
            raise SBVAEError(
                f"{path} is the replica set's checkpoint (the loops of a --replicas run, no model of its "
                f"own): pass the run folder {run} to take every replica, or one replica's "
                f"{os.path.join(run, 'replica_K', CHECKPOINTS, LAST_CHECKPOINT)}."
            )
        raise SBVAEError(f"{path} is not an sbvae-train checkpoint (it lacks the model class or the data settings).")
    module_name, _, class_name = name.rpartition(".")
    found = None
    if module_name == "sbvae" or module_name.startswith("sbvae."):
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(found, type) and issubclass(found, L.LightningModule)):
        raise SBVAEError(
            f"refusing to build {path}: its model class {name!r} is not one of sbvae's models "
            "(such as sbvae.module.VAE); use a checkpoint written by sbvae-train."
        )
    return found


# -- writing ------------------------------------------------------------------------------------


def write_failure(folder: str | os.PathLike, error: OSError, what: str, kept: str | None = None) -> SBVAEError:
    """The one sentence for a write that failed in a run folder (full disk, no permission, read-only);
    ``kept`` names the earlier file that is still intact."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk of {folder} (or point trainer.logger.init_args.save_dir to another disk)"
    else:
        fix = f"make {folder} writable (or point trainer.logger.init_args.save_dir elsewhere)"
    after = f"; {kept} is intact: resume from it with --ckpt_path" if kept else ""
    return SBVAEError(f"cannot write {what} in {folder} ({reason}): {fix}{after}.")


# -- status -------------------------------------------------------------------------------------


def write_status(run_dir: str | os.PathLike, status: str, global_step: int, started: float, **fields: Any) -> dict:
    """Write ``status.json`` (atomically) for this process; returns the record.

    Fields: status, global_step, pid, hostname, started and heartbeat (Unix times), plus ``fields``
    (diverged: step, value, message; failed: message; interrupted: signal, message).
    """
    record = {
        "status": status,
        "global_step": int(global_step),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "started": started,
        "heartbeat": time.time(),
        # Strict JSON for every reader (jq, browsers): a diverged value of nan or inf is written as a string.
        **{k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()},
    }
    with atomic_path(os.path.join(run_dir, STATUS_FILE)) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2, allow_nan=False)
    return record


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The record in ``status.json`` as written, or None when there is none."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): os.kill is all there is
        return True


def run_state(run_dir: str | os.PathLike, stale_after: float = STALE_AFTER_SECONDS) -> dict:
    """The run's effective status: its record, with a "running" that no live process backs read as "interrupted".

    A running record is believed while its heartbeat is younger than ``stale_after`` seconds and, on this
    host, its process is alive (another host's processes cannot be checked). When the status is changed,
    ``reason`` says why. A folder without a status file reads ``{"status": "unknown", "reason": ...}``.
    """
    try:
        record = read_status(run_dir)
    except (OSError, ValueError) as error:
        return {"status": "unknown", "reason": f"{STATUS_FILE} cannot be read ({error})"}
    if record is None:
        return {"status": "unknown", "reason": f"no {STATUS_FILE} in {run_dir}"}
    if record.get("status") != "running":
        return record
    pid, host, heartbeat = record.get("pid"), record.get("hostname"), record.get("heartbeat")
    if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
        reason = f"process {pid} on {host} is gone"
    elif not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > stale_after:
        reason = f"no heartbeat from process {pid} on {host} for over {stale_after:.0f} s"
    else:
        return record
    return {**record, "status": "interrupted", "reason": reason}
