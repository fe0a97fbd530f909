"""An sbatch array script for a sweep: one array task per training process (a group's block of seeds).

Each array task runs ``sbvae-sweep run OUT/sweep.yaml --only TASK``, so a requeued or repeated task
skips what is done, resumes what was interrupted and scores what finished, exactly as a local run.
"""

from __future__ import annotations

import math
import os
import shlex
import sys

from sbvae.sweep.estimate import TaskCost
from sbvae.sweep.spec import Sweep

# Scoring, startup and the uncertainty of the throughput estimate, on top of the training time.
TIME_MARGIN = 1.5
MIN_MINUTES = 30


def wall_time(seconds: float) -> str:
    minutes = max(MIN_MINUTES, math.ceil(seconds * TIME_MARGIN / 60))
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"


def sbatch_script(sweep: Sweep, out: str, costs: list[TaskCost], cpus_per_task: int = 8) -> str:
    out = os.path.abspath(out)
    names = " ".join(shlex.quote(c.task.name) for c in costs)
    longest = max(c.seconds for c in costs)
    python = shlex.quote(sys.executable)
    lines = [
        "#!/bin/bash",
        f"# sbvae sweep {sweep.name}: {len(costs)} training processes (groups x seed blocks), one per array task.",
        f"# Protocol: {sweep.steps:,} steps" + (f" (paper: {sweep.paper_steps:,})" if sweep.paper_steps else "") + ".",
        f"# Time limit: the longest task's estimate x {TIME_MARGIN} ({costs[0].throughput.source}).",
        f"#   submit: sbatch {os.path.join(out, 'sweep.sbatch')}    then: sbvae-sweep status {out}; sbvae-report {out}",
        f"#SBATCH --job-name=sbvae-{sweep.name}",
        f"#SBATCH --array=0-{len(costs) - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --gres=gpu:1",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={wall_time(longest)}",
        f"#SBATCH --output={os.path.join(out, 'logs', 'slurm-%A_%a.out')}",
        "#SBATCH --requeue",
        "set -euo pipefail",
        f"TASKS=({names})",
        'TASK="${TASKS[$SLURM_ARRAY_TASK_ID]}"',
        'echo "sbvae sweep task $TASK on $(hostname)"',
        f'exec {python} -m sbvae.cli.sweep run {shlex.quote(os.path.join(out, "sweep.yaml"))} --out {shlex.quote(out)} --only "$TASK"',
        "",
    ]
    return "\n".join(lines)
