"""The sbvae-train and sbvae-eval command lines of a sweep's tasks and runs.

Commands run as ``python -m sbvae.cli.train`` with this interpreter, so a sweep always trains with the
sbvae it was started from; they are printed as ``sbvae-train ...``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from sbvae.sweep.spec import Group, Run, Sweep, Task

TRAIN = [sys.executable, "-m", "sbvae.cli.train"]
EVALUATE = [sys.executable, "-m", "sbvae.cli.evaluate"]
# sbvae.evaluation.GROUP_METRICS (a test keeps them equal), named here without importing the metrics: they
# rank a task's seeds against each other, so they score the task's folder once, after its runs.
GROUP_METRICS = ("udr",)


def single_metrics(metrics: list[str]) -> list[str]:
    return [m for m in metrics if m not in GROUP_METRICS]


def group_metrics(metrics: list[str]) -> list[str]:
    return [m for m in metrics if m in GROUP_METRICS]


def cli_value(value: Any) -> str:
    """An override value as sbvae-train parses it: plain strings as they are, anything else as JSON (YAML flow)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def fit_command(
    config: str, overrides: dict[str, Any], seed: int, steps: int, save_dir: str, name: str, version: str
) -> list[str]:
    """sbvae-train fit of one config from ``seed`` to ``steps``, logging to save_dir/name/version."""
    cmd = TRAIN + ["fit", "--config", config]
    for key, value in overrides.items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd + [
        "--seed_everything",
        str(seed),
        "--trainer.max_steps",
        str(steps),
        "--trainer.enable_progress_bar",
        "false",
        # A fixed version folder, so a resumed task writes where it started instead of version_K+1.
        "--trainer.logger.init_args.save_dir",
        save_dir,
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        version,
    ]


def train_command(sweep: Sweep, group: Group, task: Task, out: str, resume: str | None = None) -> list[str]:
    """sbvae-train fit for one task: seeds seeds[0].. as replicas (``--replicas`` only when more than one)."""
    cmd = fit_command(
        group.config,
        group.overrides,
        task.seeds[0],
        sweep.steps,
        os.path.join(os.path.abspath(out), "runs"),
        group.name,
        task.block,
    )
    if len(task.seeds) > 1:
        cmd += ["--replicas", str(len(task.seeds))]
    if resume:
        cmd += ["--ckpt_path", resume]
    return cmd


def rerun_commands(manifest: dict[str, Any], group: dict[str, Any], seed: int, threads: int | None = None) -> list[str]:
    """The two commands that train one seed of a sweep's group alone (not as a replica: replica k is the
    single run of seed base + k) into runs/rerun/ and score it as the sweep did; shown as a user types them."""
    folder = os.path.join("runs", "rerun")
    train = fit_command(
        group["config"], group["overrides"], seed, manifest["steps"], folder, group["name"], f"seed_{seed}"
    )
    ckpt = checkpoint_path(os.path.join(folder, group["name"], f"seed_{seed}"))
    score = EVALUATE + [
        "--ckpt",
        ckpt,
        "--metrics",
        ",".join(single_metrics(manifest["metrics"])),
        "--preset",
        manifest["preset"],
        "--seed",
        "0",
        "--output",
        os.path.join(os.path.dirname(ckpt), f"eval-{manifest['preset']}-seed0.json"),
    ]
    # The CPU's convolutions sum in an order that depends on the thread count: keep the sweep's.
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return [prefix + shown(train), prefix + shown(score)]


def eval_path(sweep: Sweep | dict, run_folder: str) -> str:
    """Where a run's scores go: sbvae-eval's own default, beside the checkpoint."""
    preset = sweep.preset if isinstance(sweep, Sweep) else sweep["preset"]
    return os.path.join(run_folder, "checkpoints", f"eval-{preset}-seed0.json")


def checkpoint_path(run_folder: str) -> str:
    return os.path.join(run_folder, "checkpoints", "last.ckpt")


def eval_command(sweep: Sweep, run: Run, out: str) -> list[str]:
    folder = os.path.join(os.path.abspath(out), run.folder)
    return EVALUATE + [
        "--ckpt",
        checkpoint_path(folder),
        "--metrics",
        ",".join(single_metrics(sweep.metrics)),
        "--preset",
        sweep.preset,
        "--seed",
        "0",
        "--output",
        eval_path(sweep, folder),
        "--device",
        "auto",
    ]


def group_eval_command(sweep: Sweep, task: Task, out: str) -> list[str]:
    """The group metrics over a task's replicas: sbvae-eval of the task's folder adds each replica's share
    to the record its own scoring wrote."""
    return EVALUATE + [
        "--ckpt",
        os.path.join(os.path.abspath(out), task.folder),
        "--metrics",
        ",".join(group_metrics(sweep.metrics)),
        "--preset",
        sweep.preset,
        "--seed",
        "0",
        "--device",
        "auto",
    ]


def shown(cmd: list[str]) -> str:
    """A command as a user would type it."""
    if cmd[: len(TRAIN)] == TRAIN:
        cmd = ["sbvae-train"] + cmd[len(TRAIN) :]
    elif cmd[: len(EVALUATE)] == EVALUATE:
        cmd = ["sbvae-eval"] + cmd[len(EVALUATE) :]
    return shlex.join(cmd)
