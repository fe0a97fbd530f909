"""Everything a report needs from a sweep folder, read as data: the manifest, run states, scores, devices.

A folder written by ``sbvae-sweep run`` has ``sweep.json``.  Any other folder of sbvae-train runs
(``runs/NAME/version_K``) is read as one group per NAME, each version a run, with the scores of the
``eval-<preset>-seed0.json`` files sbvae-eval wrote beside the checkpoints.
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
from sbvae.sweep.commands import checkpoint_path, eval_path
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
        raise SBVAEError(f"{folder} is not a folder: pass the --out folder of sbvae-sweep run (or a folder of sbvae-train runs).")
    manifest = read_json(os.path.join(folder, "sweep.json"))
    if manifest is not None:
        return manifest
    manifest = manifest_from_runs(folder)
    if not manifest["groups"]:
        raise SBVAEError(f"{folder} has no sweep.json and no run folders with status.json; pass the --out folder of sbvae-sweep run.")
    return manifest


def manifest_from_runs(folder: str) -> dict[str, Any]:
    """One group per parent folder of runs (runs/NAME/version_K -> NAME), the seed from each run's config.yaml.

    A replica-parallel run counts as its replicas (runs/NAME/version_K/replica_R, in group NAME), each with
    the seed its status.json records; the set's own folder holds no model of its own."""
    found = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(folder, "**", "status.json"), recursive=True))
    found = [run for run in found if not runs_layout.replica_dirs(run)]
    groups: dict[str, list] = {}
    presets = Counter()
    for run in found:
        rel = os.path.relpath(run, folder)
        replica = runs_layout.REPLICA_FOLDER.fullmatch(os.path.basename(rel))
        parent = (os.path.dirname(os.path.dirname(rel) if replica else rel)
                  or os.path.basename(os.path.abspath(folder))).replace(os.sep, "/")
        config = os.path.join(run, "config.yaml")
        seed = None
        if replica:
            seed = (runs_layout.read_status(run) or {}).get("seed")
        elif os.path.isfile(config):
            with open(config) as f:
                seed = (yaml.safe_load(f) or {}).get("seed_everything")
        runs = groups.setdefault(parent, [])
        runs.append({"seed": seed if seed is not None else len(runs), "folder": rel})
        for path in glob.glob(os.path.join(run, "checkpoints", "eval-*-seed0.json")):
            presets[os.path.basename(path).split("-")[1]] += 1
    return {
        "name": os.path.basename(os.path.abspath(folder)), "description": "sbvae-train runs found under this folder",
        "steps": None, "paper_steps": None, "metrics": [], "preset": presets.most_common(1)[0][0] if presets else "paper",
        "pool": [], "targets": None, "figures": None,
        "groups": [{"name": name, "config": None, "overrides": {}, "axes": {}, "values": {},
                    "tasks": [{"name": f"{name}/{r['folder']}", "seeds": [r["seed"]], "folder": r["folder"], "runs": [r]} for r in runs]}
                   for name, runs in groups.items()],
    }


def collect(folder: str, manifest: dict[str, Any]) -> list[RunResult]:
    """Every run of the manifest with its state, scores and training device."""
    results = []
    for group in manifest["groups"]:
        for task in group["tasks"]:
            device = read_record(folder, task["name"]).get("device")
            for run in task["runs"]:
                run_folder = os.path.join(os.path.abspath(folder), run["folder"])
                state = sweep_run_state(folder, task["name"], run["folder"])
                evaluation = read_json(eval_path(manifest, run_folder)) if state.status == "completed" else None
                stale = None
                if evaluation is not None and evaluation.get("global_step") != state.global_step:
                    stale, evaluation = evaluation.get("global_step"), None  # scores of an older checkpoint
                result = RunResult(group["name"], run["seed"], run_folder, state.status, state.global_step,
                                   scores_of(evaluation) if evaluation else {}, evaluation, device, stale)
                if result.device is None and evaluation:
                    result.device = evaluation.get("device")
                results.append(result)
    return results


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
