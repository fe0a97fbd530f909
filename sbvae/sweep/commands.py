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


def check_train_commands(sweep: Sweep, tasks: list[Task], out: str) -> None:
    """Parse each group's sbvae-train command (``--print_config``: nothing is built or trained), so that a
    misspelt key or a bad value is one error before any plan is printed, written or run."""
    import contextlib
    import io

    from sbvae.cli.train import build_cli
    from sbvae.errors import SBVAEError

    by_group = {g.name: g for g in sweep.groups}
    for name in dict.fromkeys(t.group for t in tasks):
        task = next(t for t in tasks if t.group == name)
        args = train_command(sweep, by_group[name], task, out)[len(TRAIN) :] + ["--print_config"]
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                build_cli(args)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                lines = [line for line in err.getvalue().splitlines() if "error:" in line] or ["(no message)"]
                reason = lines[-1].split("error:", 1)[-1].strip()
                raise SBVAEError(
                    f"sweep {sweep.name}, group {name}: sbvae-train refuses its settings ({reason.rstrip('.')}); "
                    "fix the sweep file or the --set item."
                ) from None


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
