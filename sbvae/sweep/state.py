"""What a run folder holds: its status.json read with liveness checks, task locks and task records.

``sbvae.runs.run_state`` is the one place that interprets status.json; ``run_state`` here types its answer
for the sweep's tables, and ``sweep_run_state`` adds what only a sweep knows (its task locks and records).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sbvae import runs
from sbvae.errors import SBVAEError
from sbvae.runs import atomic_path

STATUSES = ("pending", "running", "interrupted", "completed", "diverged", "failed")
# A heartbeat (status.json or a task lock) older than this means the process on another host is gone.
STALE_AFTER_S = 600.0
LOCK_REFRESH_S = 60.0


@dataclass(frozen=True)
class RunState:
    status: str  # one of STATUSES
    global_step: int = 0
    record: dict[str, Any] = field(default_factory=dict)


def holder_alive(pid: int, hostname: str | None, heartbeat: float | None) -> bool:
    """Whether a lock holder still runs: its process on this host, a fresh heartbeat on another."""
    if hostname and hostname != socket.gethostname():
        return heartbeat is None or time.time() - heartbeat < STALE_AFTER_S
    return runs.process_alive(int(pid))


def run_state(folder: str) -> RunState:
    """The run's state from ``sbvae.runs.run_state``, typed: no status.json reads "pending", an unreadable one "failed"."""
    if not os.path.exists(os.path.join(folder, runs.STATUS_FILE)):
        return RunState("pending")
    record = runs.run_state(folder, stale_after=STALE_AFTER_S)
    status = record.get("status")
    if status == "unknown":
        return RunState("failed", 0, {"message": record["reason"]})
    if status not in STATUSES:
        status = "failed"
    return RunState(status, int(record.get("global_step") or 0), record)


# -- task locks: one sbvae-sweep process trains a task at a time ------------------------------------


def lock_path(out: str, task_name: str) -> str:
    return os.path.join(out, "locks", task_name.replace("/", "--") + ".lock")


def lock_holder(path: str) -> dict[str, Any] | None:
    """The live holder of a task lock ({"pid", "hostname", "time"}), or None when free or stale."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    heartbeat = os.path.getmtime(path) if os.path.exists(path) else None
    return holder if holder_alive(holder.get("pid", -1), holder.get("hostname"), heartbeat) else None


class TaskLock:
    """An exclusive lock file for one task, refreshed every minute so other hosts can tell it is alive.

    A status.json that says "running" but names no process (sbvae-train before pid records) is taken
    as interrupted when no live sbvae-sweep holds its task's lock.
    """

    def __init__(self, path: str):
        self.path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path) and lock_holder(self.path) is None:
            os.remove(self.path)  # stale: its process is gone
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "hostname": socket.gethostname(), "time": time.time()}, f)
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


# -- task records: how each training process ended, on which device ---------------------------------


def record_path(out: str, task_name: str) -> str:
    return os.path.join(out, "tasks", task_name.replace("/", "--") + ".json")


def read_record(out: str, task_name: str) -> dict[str, Any]:
    try:
        with open(record_path(out, task_name)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def write_record(out: str, task_name: str, record: dict[str, Any]) -> None:
    path = record_path(out, task_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2)


def sweep_run_state(out: str, task_name: str, run_folder: str) -> RunState:
    """A run's state as a sweep sees it: run_state, plus the task's lock and record where status.json is silent."""
    state = run_state(os.path.join(out, run_folder))
    if state.status in ("running", "interrupted") and state.record.get("pid") is None:
        holder = lock_holder(lock_path(out, task_name))
        ours = (
            holder is not None and holder.get("pid") == os.getpid() and holder.get("hostname") == socket.gethostname()
        )
        if holder is None or ours:  # no sbvae-sweep trains it (this one holds the lock only to start it)
            return RunState("interrupted", state.global_step, state.record)
        return RunState("running", state.global_step, state.record)
    if state.status == "pending":
        record = read_record(out, task_name)
        if record.get("returncode") not in (None, 0):  # the process died before writing status.json
            return RunState(
                "failed", 0, {"message": record.get("error") or f"sbvae-train exited with {record['returncode']}"}
            )
    return state


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise SBVAEError(f"{path} is unreadable ({error}); delete it and rerun the command that writes it.") from error
