"""sbvae-sweep: train and score a grid of runs from one sweep file; list their states.

    sbvae-sweep run configs/paper/smoke.yaml [--out DIR] [--dry-run] [--only GROUP ...] [--emit slurm]
                    [--set KEY=VALUE ...] [--jobs N]
    sbvae-sweep status DIR

run: each group (runs sharing a config except the seed) trains as one process of replicas, then each
finished run is scored with sbvae-eval.  Completed runs are skipped, interrupted ones resumed from
last.ckpt, diverged ones counted and never retried.  --dry-run prints the runs, the processes and the
device time at the throughput measured in benchmarks/results; --emit slurm writes an sbatch array
script with one process per array task.  Then: sbvae-report DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import yaml

from sbvae.errors import SBVAEError
from sbvae.runs import atomic_path

PROG = "sbvae-sweep"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and score a sweep (or --dry-run / --emit slurm)")
    run.add_argument("sweep", help="a sweep file, e.g. configs/paper/smoke.yaml")
    run.add_argument("--out", help="output folder (default: runs/sweeps/<sweep name>)")
    run.add_argument(
        "--dry-run", action="store_true", help="print runs, processes and estimated device time; train nothing"
    )
    run.add_argument(
        "--only", nargs="+", metavar="NAME", help="groups or tasks (group/seeds_0-4) to run; shell patterns allowed"
    )
    run.add_argument(
        "--emit", choices=["slurm"], help="write DIR/sweep.sbatch (one array task per process) instead of training"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the sweep: a sweep key (steps=200, seeds=3), a grid key (new values) or any dotted override",
    )
    run.add_argument(
        "--jobs", type=int, default=1, help="processes at a time, spread round robin over the visible GPUs"
    )
    status = commands.add_parser(
        "status", help="list a sweep's runs: completed, running, interrupted, diverged, failed"
    )
    status.add_argument("dir", help="the --out folder of sbvae-sweep run")
    return parser.parse_args(argv)


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def default_out(name: str) -> str:
    return os.path.join("runs", "sweeps", name)


def write_plan(sweep, out: str) -> None:
    """OUT/sweep.yaml (the resolved sweep file, rerunnable from anywhere) and OUT/sweep.json (the manifest)."""
    os.makedirs(out, exist_ok=True)
    with atomic_path(os.path.join(out, "sweep.yaml")) as tmp, open(tmp, "w") as f:
        f.write(f"# sweep {sweep.name} as run from {sweep.path}, with --set applied\n")
        yaml.safe_dump(sweep.resolved_file(), f, sort_keys=False)
    with atomic_path(os.path.join(out, "sweep.json")) as tmp, open(tmp, "w") as f:
        json.dump(sweep.manifest(), f, indent=2)


def print_plan(sweep, tasks, costs, out: str, jobs: int = 1) -> None:
    from sbvae.sweep.commands import shown, train_command
    from sbvae.sweep.estimate import duration

    runs = sum(len(t.seeds) for t in tasks)
    groups = sorted({t.group for t in tasks}, key=[g.name for g in sweep.groups].index)
    paper = f" (paper: {sweep.paper_steps:,})" if sweep.paper_steps else ""
    print(
        f"sweep {sweep.name}: {plural(runs, 'run')} in {plural(len(groups), 'group')}, "
        f"{plural(len(tasks), 'training process', 'training processes')}; "
        f"{sweep.steps:,} steps per run{paper}; metrics {', '.join(sweep.metrics)} ({sweep.preset} preset)"
    )
    print(f"output: {out}")
    width = max(len(t.name) for t in tasks)
    print(f"\n{'process':<{width}}  {'seeds':<12} {'model':<15} {'images':>14}  est. time")
    by_group = {g.name: g for g in sweep.groups}
    for cost in costs:
        t = cost.task
        seeds = str(t.seeds[0]) if len(t.seeds) == 1 else f"{t.seeds[0]}..{t.seeds[-1]} ({len(t.seeds)})"
        print(f"{t.name:<{width}}  {seeds:<12} {cost.kind:<15} {cost.images:>14,}  {duration(cost.seconds)}")
    print("\ncommands:")
    for t in tasks:
        print("  " + shown(train_command(sweep, by_group[t.group], t, out)))
    total = sum(c.seconds for c in costs)
    sources = sorted({c.throughput.source for c in costs})
    print(f"\nestimated device time: {duration(total)} for {sum(c.images for c in costs):,} training images, at")
    for source in sources:
        print(f"  {source}")
    if any(c.cpu for c in costs):
        print(
            f"CPU rows are one thread each at the benchmark's widths (narrower networks train faster); with --jobs {jobs} "
            f"the CPU tasks take about {duration(sum(c.seconds for c in costs if c.cpu) / jobs)} of wall time."
        )
    if sweep.preset == "paper":
        print("(scoring adds about 15 s per run at the paper preset on a GPU)")
    else:
        print(f"(scoring at the {sweep.preset} preset is not counted)")


def check_train_commands(sweep, tasks: list, out: str) -> None:
    """Parse each group's sbvae-train command (``--print_config``: nothing is built or trained), so that a
    misspelt key or a bad value is one error before any plan is printed, written or run."""
    import contextlib
    import io

    from sbvae.cli.train import build_cli
    from sbvae.sweep.commands import TRAIN, train_command

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


def cmd_run(args) -> int:
    from sbvae.sweep.estimate import estimate, results_folder
    from sbvae.sweep.spec import load_sweep, select

    if args.jobs < 1:
        raise SBVAEError(f"--jobs must be at least 1, got {args.jobs}.")
    sweep = load_sweep(args.sweep, args.set)
    out = args.out or default_out(sweep.name)
    tasks = select(sweep, args.only)
    check_train_commands(sweep, tasks, out)
    if args.dry_run:
        print_plan(sweep, tasks, estimate(sweep, tasks, results_folder(args.sweep)), out, args.jobs)
        return 0
    from sbvae.sweep.runner import Runner

    runner = Runner(sweep, out, jobs=args.jobs)
    runner.check_settings(tasks)  # before the plan is written: a refused sweep leaves the folder as it was
    write_plan(sweep, out)
    if args.emit == "slurm":
        from sbvae.sweep.slurm import sbatch_script

        path = os.path.join(out, "sweep.sbatch")
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(sbatch_script(sweep, out, estimate(sweep, tasks, results_folder(args.sweep))))
        print(f"wrote {path}: {len(tasks)} array tasks, one per training process; submit with: sbatch {path}")
        return 0
    outcomes = runner.run(tasks)
    counts = sum((o.statuses for o in outcomes), Counter())
    trained = sum(o.action in ("trained", "resumed") for o in outcomes)
    scored = sum(o.scored for o in outcomes)
    print(
        f"sweep {sweep.name}: trained {trained} of {len(outcomes)} processes, scored {scored} runs; runs "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f". Report: sbvae-report {out}"
    )
    processes = sum(o.action == "failed" for o in outcomes)
    scorings = sum(o.score_failures for o in outcomes)
    if processes or scorings:
        what = " and ".join(
            x
            for x in (
                plural(processes, "training process", "training processes") if processes else "",
                plural(scorings, "scoring") if scorings else "",
            )
            if x
        )
        print(
            f"{PROG}: {what} failed; see the logs in {os.path.join(out, 'logs')} and rerun to retry.", file=sys.stderr
        )
        return 1
    return 0


def cmd_status(args) -> int:
    from sbvae.report.collect import load_manifest
    from sbvae.sweep.commands import eval_path
    from sbvae.sweep.state import read_json, sweep_run_state

    manifest = load_manifest(args.dir)
    rows, counts = [], Counter()
    for group in manifest["groups"]:
        for task in group["tasks"]:
            for run in task["runs"]:
                state = sweep_run_state(args.dir, task["name"], run["folder"])
                status = state.status
                if status == "completed" and state.global_step < manifest["steps"]:
                    status = "short"  # completed at an earlier protocol (a --set steps= or --only since)
                counts[status] += 1
                scores = (
                    read_json(eval_path(manifest, os.path.join(args.dir, run["folder"])))
                    if state.status == "completed"
                    else None
                )
                scored = (
                    "yes"
                    if scores and scores.get("global_step") == state.global_step
                    else "no"
                    if state.status == "completed"
                    else "-"
                )
                note = state.record.get("message", "") if state.status in ("failed", "diverged") else ""
                if status == "short":
                    note = f"completed at {state.global_step:,} of {manifest['steps']:,} steps: rerun the sweep to train on"
                rows.append(
                    (group["name"], str(run["seed"]), status, str(state.global_step), scored, run["folder"], note)
                )
    total = sum(counts.values())
    print(
        f"sweep {manifest['name']} in {args.dir}: {total} runs, "
        + ", ".join(
            f"{counts[s]} {s}"
            for s in ("completed", "short", "running", "interrupted", "diverged", "failed", "pending")
            if counts[s]
        )
        + f"; protocol {manifest['steps']:,} steps"
    )
    header = ("group", "seed", "status", "step", "scored", "folder", "")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        code = cmd_run(args) if args.command == "run" else cmd_status(args)
    except SBVAEError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume.", file=sys.stderr)
        sys.exit(130)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
