"""Executing a sweep: each task trained (fresh, resumed or skipped), then each finished run scored.

- completed runs (at the sweep's steps) are skipped; completed at fewer steps are continued to them;
- interrupted and failed runs resume from last.ckpt (a task without any checkpoint starts again, its
  partial folder moved aside);
- diverged runs are counted and never retried: the same seed would diverge the same way;
- a task is held by one sbvae-sweep process at a time (a lock file under OUT/locks);
- tasks run one after another, or ``jobs`` at a time over the visible GPUs (round robin).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import yaml

from sbvae.errors import SBVAEError
from sbvae.sweep import state as S
from sbvae.sweep.commands import (
    checkpoint_path,
    eval_command,
    eval_path,
    group_eval_command,
    group_metrics,
    shown,
    single_metrics,
    train_command,
)
from sbvae.sweep.spec import Group, Sweep, Task, block_seeds


@dataclass
class TaskOutcome:
    task: Task
    action: str  # "done" (nothing to train), "trained", "resumed", "busy", "failed"
    statuses: Counter = field(default_factory=Counter)
    scored: int = 0
    score_failures: int = 0


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES, else those nvidia-smi lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(lines) if line.startswith("GPU ")]


def device_name(gpu: str | None) -> str:
    """A GPU's name from nvidia-smi (no CUDA context in this process), or the CPU's core count."""
    if gpu is None:
        return f"cpu ({os.cpu_count()} cores)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", gpu],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or f"cuda:{gpu}"


def settings_of(group: Group) -> dict:
    """What makes two trainings the same experiment: the config's contents (not its path, so a moved
    checkout still matches; not its comments) and the overrides.  The steps may grow: a task is then continued."""
    with open(group.config) as f:
        config = yaml.safe_load(f)
    return {"config": config, "overrides": group.overrides}


class Runner:
    def __init__(self, sweep: Sweep, out: str, jobs: int = 1, echo=print):
        self.sweep, self.out, self.jobs = sweep, os.path.abspath(out), max(1, jobs)
        self.groups = {g.name: g for g in sweep.groups}
        self._echo, self._print_lock = echo, threading.Lock()

    def say(self, task: Task, message: str) -> None:
        with self._print_lock:
            self._echo(f"[{task.name}] {message}")

    def check_settings(self, tasks: list[Task]) -> None:
        """Refuse to mix experiments: a task folder trained with other settings, or past this sweep's steps,
        is not this sweep's; nor is a task whose seeds another process of the folder trained."""
        for task in tasks:
            self._check_seeds(task)
            furthest = max((s.global_step for s in self.states(task)), default=0)
            if furthest > self.sweep.steps:
                raise SBVAEError(
                    f"{task.name} in {self.out} was trained to step {furthest}, past this sweep's "
                    f"{self.sweep.steps} steps, and its report would name a protocol its runs did not follow; "
                    f"set steps={furthest} or more, or use another --out."
                )
            before = S.read_record(self.out, task.name).get("settings")
            now = settings_of(self.groups[task.group])
            if before is not None and before != now:
                changed = [
                    k
                    for k in set(before["overrides"]) | set(now["overrides"])
                    if before["overrides"].get(k) != now["overrides"].get(k)
                ]
                what = f"overrides {sorted(changed)}" if changed else "its config file's contents"
                raise SBVAEError(
                    f"{task.name} in {self.out} was trained with other settings ({what} differ); "
                    "use another --out, or delete that task's folder to train it again."
                )

    def _check_seeds(self, task: Task) -> None:
        """A new blocking of the seeds (seeds raised with replicas left at all of them, say) would train
        done seeds again in a second folder."""
        folder = os.path.dirname(os.path.join(self.out, task.folder))  # the group's task folders
        for block in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            seeds = block_seeds(block)
            if block == task.block or not set(seeds) & set(task.seeds):
                continue
            raise SBVAEError(
                f"{task.name} would train seeds {seeds[0]}..{seeds[-1]} again: {task.group}/{block} in {self.out} "
                f"trained them as one process. Keep that block whole (--set replicas={len(seeds)}, and seeds that "
                "include all of it), or use another --out."
            )

    def run(self, tasks: list[Task]) -> list[TaskOutcome]:
        self.check_settings(tasks)
        gpus = visible_gpus()
        slots: queue.Queue = queue.Queue()
        for i in range(self.jobs):
            slots.put(gpus[i % len(gpus)] if gpus else None)

        def work(task: Task) -> TaskOutcome:
            gpu = slots.get()
            try:
                return self.run_task(task, gpu)
            finally:
                slots.put(gpu)

        if self.jobs == 1:
            return [work(t) for t in tasks]
        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(work, tasks))

    # -- one task -------------------------------------------------------------------------------
    def states(self, task: Task) -> list[S.RunState]:
        return [S.sweep_run_state(self.out, task.name, r.folder) for r in task.runs()]

    def finished(self, state: S.RunState) -> bool:
        return state.status == "diverged" or (state.status == "completed" and state.global_step >= self.sweep.steps)

    def resume_point(self, task: Task) -> str | None:
        """--ckpt_path for a task: the run's last.ckpt, or the task folder, which resumes every replica."""
        runs = task.runs()
        if len(runs) == 1:
            ckpt = checkpoint_path(os.path.join(self.out, runs[0].folder))
            return ckpt if os.path.isfile(ckpt) else None
        # The set's own last.ckpt decides: replica files are committed after it (or wait, pending, for the resume).
        folder = os.path.join(self.out, task.folder)
        return folder if os.path.isfile(checkpoint_path(folder)) else None

    def run_task(self, task: Task, gpu: str | None) -> TaskOutcome:
        lock = S.TaskLock(S.lock_path(self.out, task.name))
        if not lock.acquire():
            holder = S.lock_holder(lock.path) or {}
            self.say(task, f"busy: sbvae-sweep pid {holder.get('pid')} on {holder.get('hostname')} holds it; skipped")
            return TaskOutcome(task, "busy")
        try:
            return self._run_locked(task, gpu)
        finally:
            lock.release()

    def _run_locked(self, task: Task, gpu: str | None) -> TaskOutcome:
        states = self.states(task)
        live = [s for s in states if s.status == "running"]
        if live:
            self.say(task, f"a process (pid {live[0].record.get('pid')}) is training it; skipped")
            return TaskOutcome(task, "busy", Counter(s.status for s in states))
        action = "done"
        if not all(self.finished(s) for s in states):
            action = self.train(task, gpu, states)
            states = self.states(task)
        else:
            self.say(
                task,
                "nothing to train: "
                + ", ".join(f"{n} {k}" for k, n in sorted(Counter(s.status for s in states).items())),
            )
        outcome = TaskOutcome(task, action, Counter(s.status for s in states))
        self.score(task, states, gpu, outcome)
        return outcome

    def train(self, task: Task, gpu: str | None, states: list[S.RunState]) -> str:
        group = self.groups[task.group]
        resume = self.resume_point(task)
        folder = os.path.join(self.out, task.folder)
        if resume is None and os.path.isdir(folder):
            aside = f"{folder}.abandoned-{int(time.time())}"
            os.replace(folder, aside)  # no checkpoint to resume: keep the partial logs out of the new run's way
            self.say(task, f"no checkpoint to resume; moved the partial folder to {aside}")
        counts = Counter(s.status for s in states)
        how = (
            f"resuming from {os.path.relpath(resume, self.out)} (step {max(s.global_step for s in states)})"
            if resume
            else "from scratch"
        )
        seeds = f"seed {task.seeds[0]}" if len(task.seeds) == 1 else f"seeds {task.seeds[0]}..{task.seeds[-1]}"
        cmd = train_command(self.sweep, group, task, self.out, resume)
        log = self.log_path(task)
        device = device_name(gpu)
        self.say(
            task,
            f"training {seeds} to step {self.sweep.steps} {how} on {device} "
            f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); log {log}",
        )
        record = {
            "task": task.name,
            "settings": settings_of(group),
            "command": shown(cmd),
            "device": device,
            "hostname": socket.gethostname(),
            "gpu": gpu,
            "threads": self.cpu_threads(gpu),
            "started": time.time(),
            "steps": self.sweep.steps,
            "resumed_from": resume,
        }
        S.write_record(self.out, task.name, {**record, "returncode": None})
        start = time.perf_counter()
        returncode = self.execute(cmd, log, gpu)
        record.update(returncode=returncode, seconds=round(time.perf_counter() - start, 2), finished=time.time())
        if returncode not in (0, 3):  # 3: sbvae-train's divergence exit, recorded in status.json
            record["error"] = last_line(log)
        S.write_record(self.out, task.name, record)
        after = Counter(s.status for s in self.states(task))
        self.say(
            task,
            f"sbvae-train exited {returncode} after {record['seconds']:.0f} s: "
            + ", ".join(f"{n} {k}" for k, n in sorted(after.items()))
            + (f" ({record['error']})" if "error" in record else ""),
        )
        return ("resumed" if resume else "trained") if returncode in (0, 3) else "failed"

    def score(self, task: Task, states: list[S.RunState], gpu: str | None, outcome: TaskOutcome) -> None:
        for run, st in zip(task.runs(), states):
            if st.status != "completed" or not single_metrics(self.sweep.metrics):
                continue
            folder = os.path.join(self.out, run.folder)
            if self.scores_current(folder, st.global_step, single_metrics(self.sweep.metrics)):
                continue
            cmd = eval_command(self.sweep, run, self.out)
            returncode = self.execute(cmd, self.log_path(task), gpu)
            if returncode == 0:
                outcome.scored += 1
            else:
                outcome.score_failures += 1
                self.say(task, f"sbvae-eval failed on seed {run.seed} ({last_line(self.log_path(task))})")
        if outcome.scored:
            self.say(
                task,
                f"scored {outcome.scored} run(s) with {', '.join(self.sweep.metrics)} ({self.sweep.preset} preset)",
            )
        self.score_group(task, states, gpu, outcome)

    def score_group(self, task: Task, states: list[S.RunState], gpu: str | None, outcome: TaskOutcome) -> None:
        """UDR over the task's seeds, once they all completed (a task of one seed has no group to rank)."""
        group = group_metrics(self.sweep.metrics)
        if not group or len(task.seeds) < 2 or any(st.status != "completed" for st in states):
            return
        if all(
            self.scores_current(os.path.join(self.out, run.folder), st.global_step, group)
            for run, st in zip(task.runs(), states)
        ):
            return
        if self.execute(group_eval_command(self.sweep, task, self.out), self.log_path(task), gpu) == 0:
            self.say(task, f"scored {', '.join(group)} over its {len(task.seeds)} seeds")
        else:
            outcome.score_failures += 1
            self.say(task, f"sbvae-eval of {', '.join(group)} failed ({last_line(self.log_path(task))})")

    def scores_current(self, folder: str, step: int, metrics: list[str]) -> bool:
        """An eval JSON for this checkpoint's step, preset and these metrics already exists."""
        try:
            record = S.read_json(eval_path(self.sweep, folder))
        except SBVAEError:
            return False
        return (
            bool(record)
            and record.get("global_step") == step
            and record.get("preset") == self.sweep.preset
            and set(metrics) <= set(record.get("metrics", {}))
        )

    def log_path(self, task: Task) -> str:
        return os.path.join(self.out, "logs", task.name.replace("/", "--") + ".log")

    def cpu_threads(self, gpu: str | None) -> int | None:
        """The CPU threads of a task's process, set and recorded (a rerun needs the same count: the CPU's
        sums depend on it): OMP_NUM_THREADS if set, else this process's cores shared out among ``jobs``
        CPU processes (each taking every core would slow them all); None on a GPU."""
        if gpu is not None:
            return None
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            return int(os.environ["OMP_NUM_THREADS"])
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.jobs)

    def execute(self, cmd: list[str], log: str, gpu: str | None) -> int:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif self.cpu_threads(gpu):
            env["OMP_NUM_THREADS"] = str(self.cpu_threads(gpu))
        with open(log, "a") as f:
            f.write(f"\n$ {shown(cmd)}\n")
            f.flush()
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def last_line(log: str) -> str:
    """The error a failed command's log ends with: its last line naming the program (``sbvae-train: ...``,
    the CLIs' one-sentence errors, which a hint line may follow), else its last non-empty line."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith(("sbvae-train:", "sbvae-eval:"))]
    return (errors or lines or [""])[-1][:300]
