"""Everything a report needs from a sweep folder, read as data: the manifest, run states, scores, devices.

A folder written by ``sbvae-sweep run`` has ``sweep.json``.  Any other folder of sbvae-train runs
(``runs/NAME/version_K``) is read as groups of runs that share a config (all but the seed) and a step
count, each seed counted once, with the scores of the ``eval-<preset>-seed0.json`` files sbvae-eval
wrote beside the checkpoints; runs it will not pool are listed with the reason.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from sbvae import runs as runs_layout
from sbvae.errors import SBVAEError
from sbvae.sweep.commands import TRAIN, checkpoint_path, eval_path, rerun_commands, shown
from sbvae.sweep.state import read_json, read_record, sweep_run_state


@dataclass
class RunResult:
    group: str
    seed: int
    folder: str  # absolute
    status: str
    global_step: int
    scores: dict[str, float] = field(default_factory=dict)  # report column -> value
    evaluation: dict[str, Any] | None = None  # the sbvae-eval JSON
    device: str | None = None  # where it trained
    stale_step: int | None = None  # the step of scores left out because the checkpoint has moved on since
    rerun: list[str] = field(default_factory=list)  # the commands that train and score this seed alone

    @property
    def checkpoint(self) -> str | None:
        path = checkpoint_path(self.folder)
        return path if os.path.isfile(path) else None


def scores_of(evaluation: dict[str, Any]) -> dict[str, float]:
    """Report columns from an sbvae-eval record: the ELBO's four numbers, then each metric's score."""
    metrics = evaluation.get("metrics", {})
    out = {}
    if "elbo" in metrics:
        out.update({key: float(metrics["elbo"][key]) for key in ("elbo", "nll", "kl", "latents_used")})
    for name, result in metrics.items():
        if name != "elbo" and "score" in result:
            out[name] = float(result["score"])
    return out


def load_manifest(folder: str) -> dict[str, Any]:
    """sweep.json of an sbvae-sweep output folder, or a manifest made up from the runs found under it."""
    if not os.path.isdir(folder):
        raise SBVAEError(
            f"{folder} is not a folder: pass the --out folder of sbvae-sweep run (or a folder of sbvae-train runs)."
        )
    manifest = read_json(os.path.join(folder, "sweep.json"))
    if manifest is not None:
        return manifest
    manifest = manifest_from_runs(folder)
    if not manifest["groups"]:
        raise SBVAEError(
            f"{folder} has no sweep.json and no run folders with status.json; pass the --out folder of sbvae-sweep run."
        )
    return manifest


# Keys of a resolved sbvae-train config that say where a run writes and how it is resumed, not what it
# trains: two runs that differ only here (and in the seed) are seeds of one experiment.
NOT_DEFINING = (
    "seed_everything",
    "ckpt_path",
    "replicas",
    "last_checkpoint",
    "trainer.logger",
    "trainer.max_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def definition(config: dict[str, Any]) -> dict[str, Any]:
    """What defines a run: its resolved config (nested dicts, dotted paths) without the NOT_DEFINING keys."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif not any(prefix == k or prefix.startswith(k + ".") for k in NOT_DEFINING):
            flat[prefix] = value

    walk("", config)
    return flat


@dataclass
class FoundRun:
    folder: str  # relative to the folder searched
    parent: str  # runs/NAME/version_K -> NAME
    seed: int | None
    steps: int | None
    config: dict[str, Any] | None  # its definition(); None without a readable config.yaml
    status: dict[str, Any]  # its status.json


def _found_run(folder: str, run: str) -> FoundRun:
    rel = os.path.relpath(run, folder)
    replica = runs_layout.REPLICA_FOLDER.fullmatch(os.path.basename(rel))
    parent = (
        os.path.dirname(os.path.dirname(rel) if replica else rel) or os.path.basename(os.path.abspath(folder))
    ).replace(os.sep, "/")
    status = runs_layout.read_status(run) or {}
    config_file = os.path.join(os.path.dirname(run) if replica else run, "config.yaml")  # a replica's is its set's
    config = None
    if os.path.isfile(config_file):
        with open(config_file) as f:
            config = yaml.safe_load(f) or {}
    seed = status.get("seed") if replica else (config or {}).get("seed_everything")
    # A completed run trained to its global step; any other stopped on the way to the steps it was asked for.
    steps = (
        status.get("global_step")
        if status.get("status") == "completed"
        else ((config or {}).get("trainer") or {}).get("max_steps", status.get("global_step"))
    )
    return FoundRun(rel, parent, seed, steps, definition(config) if config is not None else None, status)


def _labels(keys: list[tuple], runs: dict[tuple, list[FoundRun]]) -> dict[tuple, str]:
    """A row name per group: its folders' names, and where several groups share them, what sets them apart."""
    names = {key: "+".join(sorted({r.parent for r in runs[key]})) for key in keys}
    labels = {}
    for key in keys:
        twins = [k for k in keys if names[k] == names[key]]
        if len(twins) == 1:
            labels[key] = names[key]
            continue
        configs = [{c: json.loads(v) for c, v in k[0]} for k in twins]
        differ = sorted({c for conf in configs for c in conf if len({repr(x.get(c)) for x in configs}) > 1})
        mine = {c: json.loads(v) for c, v in key[0]}
        parts = [f"{c.rsplit('.', 1)[-1]}={mine.get(c)}" for c in differ[:2]] + (["..."] if len(differ) > 2 else [])
        if len({k[1] for k in twins}) > 1:
            parts.append(f"{key[1]} steps")
        labels[key] = f"{names[key]} [{', '.join(parts)}]"
    seen: Counter = Counter()
    for key in keys:  # configs that differ only past the two keys shown would share a name: number them
        seen[labels[key]] += 1
        if seen[labels[key]] > 1:
            labels[key] = f"{labels[key]} #{seen[labels[key]]}"
    return labels


def manifest_from_runs(folder: str) -> dict[str, Any]:
    """The runs found under a folder, grouped by what defines them: the resolved config minus the seed
    (and minus where it writes, see NOT_DEFINING), plus the steps it trained.  Each seed counts once per
    group (a completed, scored run before another, then the newest); runs that cannot be pooled are listed
    under ``refused`` with the reason.

    A replica-parallel run counts as its replicas (runs/NAME/version_K/replica_R), each with the seed its
    status.json records and its set's config; the set's own folder holds no model of its own."""
    found = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(folder, "**", "status.json"), recursive=True))
    found = [run for run in found if not runs_layout.replica_dirs(run)]
    candidates: dict[tuple, dict[int, list[tuple[tuple, FoundRun]]]] = {}
    refused = []
    presets = Counter()
    for path in found:
        run = _found_run(folder, path)
        scores = glob.glob(os.path.join(path, "checkpoints", "eval-*-seed0.json"))
        for file in scores:
            presets[os.path.basename(file).split("-")[1]] += 1
        if run.config is None:
            refused.append(
                {"folder": run.folder, "seed": run.seed, "reason": "no config.yaml, so what it trained is unknown"}
            )
            continue
        if run.seed is None:
            refused.append({"folder": run.folder, "seed": None, "reason": "no seed in its config.yaml or status.json"})
            continue
        key = (tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in run.config.items())), run.steps)
        # Of two runs of one seed, the one counted: completed, then scored, then the newest (a rerun after a failure).
        rank = (
            run.status.get("status") == "completed",
            bool(scores),
            os.path.getmtime(os.path.join(path, runs_layout.STATUS_FILE)),
        )
        candidates.setdefault(key, {}).setdefault(run.seed, []).append((rank, run))
    groups: dict[tuple, list[FoundRun]] = {}
    for key, seeds in candidates.items():
        for seed, options in seeds.items():
            options.sort(key=lambda o: o[0], reverse=True)
            kept = options[0][1]
            groups.setdefault(key, []).append(kept)
            refused += [
                {
                    "folder": run.folder,
                    "seed": seed,
                    "reason": f"seed {seed} of the same config and steps is already counted from {kept.folder}",
                }
                for _, run in options[1:]
            ]
        groups[key].sort(key=lambda r: r.folder)
    keys = sorted(groups, key=lambda k: (groups[k][0].folder, k[1] or 0))
    labels = _labels(keys, groups)
    return {
        "name": os.path.basename(os.path.abspath(folder)),
        "description": "sbvae-train runs found under this folder",
        "steps": None,
        "paper_steps": None,
        "metrics": [],
        "preset": presets.most_common(1)[0][0] if presets else "paper",
        "pool": [],
        "targets": None,
        "figures": None,
        "refused": refused,
        "groups": [
            {
                "name": labels[key],
                "config": None,
                "overrides": {},
                "axes": {},
                "values": {},
                "steps": key[1],
                "tasks": [
                    {
                        "name": f"{labels[key]}/{r.folder}",
                        "seeds": [r.seed],
                        "folder": r.folder,
                        "runs": [{"seed": r.seed, "folder": r.folder}],
                    }
                    for r in groups[key]
                ],
            }
            for key in keys
        ],
    }


def collect(folder: str, manifest: dict[str, Any]) -> list[RunResult]:
    """Every run of the manifest with its state, scores and training device."""
    results = []
    for group in manifest["groups"]:
        for task in group["tasks"]:
            record = read_record(folder, task["name"])
            device = record.get("device")
            for run in task["runs"]:
                run_folder = os.path.join(os.path.abspath(folder), run["folder"])
                state = sweep_run_state(folder, task["name"], run["folder"])
                evaluation = read_json(eval_path(manifest, run_folder)) if state.status == "completed" else None
                stale = None
                if evaluation is not None and evaluation.get("global_step") != state.global_step:
                    stale, evaluation = evaluation.get("global_step"), None  # scores of an older checkpoint
                result = RunResult(
                    group["name"],
                    run["seed"],
                    run_folder,
                    state.status,
                    state.global_step,
                    scores_of(evaluation) if evaluation else {},
                    evaluation,
                    device,
                    stale,
                )
                if result.device is None and evaluation:
                    result.device = evaluation.get("device")
                if group.get("config"):
                    result.rerun = rerun_commands(manifest, group, run["seed"], record.get("threads"))
                else:
                    result.rerun = plain_rerun(folder, run["folder"], run["seed"], manifest["preset"])
                results.append(result)
    return results


def plain_rerun(folder: str, run_folder: str, seed: int, preset: str) -> list[str]:
    """An sbvae-train run's seed trained alone from its config.yaml (a replica's: its set's), then scored."""
    run = os.path.join(folder, run_folder)
    replica = runs_layout.REPLICA_FOLDER.fullmatch(os.path.basename(run_folder))
    config = os.path.join(os.path.dirname(run) if replica else run, "config.yaml")
    version = f"rerun-seed_{seed}"
    train = TRAIN + [
        "fit",
        "--config",
        config,
        "--seed_everything",
        str(seed),
        "--replicas",
        "1",
        "--ckpt_path",
        "null",
        "--trainer.logger.init_args.version",
        version,
    ]
    return [shown(train), f"sbvae-eval --ckpt <the new run folder, .../{version}> --preset {preset}"]


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
