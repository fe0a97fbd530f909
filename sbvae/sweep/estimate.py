"""Device time of a sweep at the training throughput measured in benchmarks/results.

The rows read are those of ``benchmarks/results/*.json`` files with a ``results`` list of
{"model", "batch" (or "batch_size"), "replicas", "path", "images_per_s"}; ``throughput-*.json`` files
(sbvae-train's real loop on a GPU) come first; rows measured on a CPU estimate only groups that train on
the CPU (``trainer.accelerator: cpu``), and those only from CPU rows.  A row is matched by model kind (sbd, deconv,
coordconv, factorvae-sbd, ...) and precision (the file's, 32-true unless it says otherwise, against the run's
``trainer.precision``), then batch, then replica count; its images/s are scaled by the pixel count from the
benchmark's image size (64 px unless the file says otherwise) to the run's.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

from sbvae.sweep.spec import Group, Sweep, Task

# sbvae-train's real loop on an H100 at batch 16, 64 px, measured by the project before the engine's fast step.
DEFAULT_IMAGES_PER_S = 1470.0
DEFAULT_SOURCE = (
    "assumed 1,470 img/s (sbvae-train's loop on one H100 at batch 16, measured before its fast step: "
    "a pessimistic guess for a GPU, none for a CPU): no GPU row in benchmarks/results"
)


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    source: str  # the file and row it came from, or the default


@dataclass(frozen=True)
class TaskCost:
    task: Task
    kind: str
    images: int
    throughput: Throughput
    cpu: bool = False  # trained on the CPU (trainer.accelerator cpu)

    @property
    def seconds(self) -> float:
        return self.images / self.throughput.images_per_s


def results_folder(start: str) -> str | None:
    """The benchmarks/results folder of the repository holding ``start`` (a sweep file), else of sbvae itself."""
    for origin in (
        os.path.dirname(os.path.abspath(start)),
        os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    ):
        folder = origin
        while True:
            candidate = os.path.join(folder, "benchmarks", "results")
            if os.path.isdir(candidate):
                return candidate
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return None


def _kind_name(model: str) -> str:
    """Benchmark model names to sweep kinds: 'vae-sbd' and 'sbd' are both 'sbd'."""
    return model[4:] if model.startswith("vae-") else model


def read_rows(folder: str | None) -> list[dict[str, Any]]:
    if not folder:
        return []
    files = sorted(glob.glob(os.path.join(folder, "throughput-*.json")))
    files += [f for f in sorted(glob.glob(os.path.join(folder, "*.json"))) if f not in files]
    rows = []
    for path in files:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            continue
        # A CPU measurement estimates only CPU runs: for a GPU's it would overstate the time a hundredfold.
        cpu = str(data.get("device", "")).lower().startswith("cpu")
        for row in data["results"]:
            if not isinstance(row, dict) or not isinstance(row.get("images_per_s"), (int, float)) or "model" not in row:
                continue
            rows.append(
                {
                    "kind": _kind_name(str(row["model"])),
                    "batch": row.get("batch", row.get("batch_size")),
                    "replicas": row.get("replicas", 1),
                    "path": row.get("path"),
                    "images_per_s": float(row["images_per_s"]),
                    "image_size": row.get("image_size", data.get("image_size", 64)),
                    "precision": precision_name(data.get("precision")),
                    "source": f"{os.path.basename(path)} ({data.get('device', 'unknown device')})",
                    "cpu": cpu,
                }
            )
    return rows


def precision_name(value: Any) -> str:
    """Lightning's precision by its full name: its default (None) and 32 are "32-true", its short "bf16" and 16
    the mixed ones."""
    if value is None:
        return "32-true"
    short = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
    return short.get(str(value), str(value))


def lookup(
    rows: list[dict[str, Any]],
    kind: str,
    batch: int,
    replicas: int,
    image_size: int,
    cpu: bool = False,
    precision: str = "32-true",
) -> Throughput:
    """The closest measured row of the device kind (CPU or accelerator) and precision: same model kind, then
    the same batch, image size, replica count and the trainer path preferred."""
    # Another precision's rate says little of this one's (bf16 runs about twice fp32's on a GPU).
    same = [r for r in rows if r["kind"] == kind and r.get("cpu", False) == cpu and r["precision"] == precision]
    what = kind if precision == "32-true" else f"{kind} in {precision}"
    if not same and cpu:
        return Throughput(
            math.nan,
            f"no CPU row in benchmarks/results measures {what}, so its time is unknown "
            f"(python benchmarks/throughput.py --device cpu --quick --models {kind} --precision {precision} "
            "measures one)",
        )
    if not same:
        scale = (64 / image_size) ** 2
        note = f", scaled x{scale:g} for {image_size} px" if scale != 1 else ""
        return Throughput(DEFAULT_IMAGES_PER_S * scale, f"{DEFAULT_SOURCE} matches {what}{note}")

    def distance(row):
        return (
            row["batch"] != batch,
            row["image_size"] != image_size,
            abs((row["replicas"] or 1) - replicas),
            row["path"] not in (None, "trainer"),
        )

    best = min(same, key=distance)  # rows keep file order on ties: throughput-*.json first
    scale = (best["image_size"] / image_size) ** 2
    what = f"{best['source']}: {kind}, batch {best['batch']}, {best['replicas'] or 1} replica(s), {best['images_per_s']:,.0f} img/s"
    if scale != 1:
        what += f", scaled x{scale:g} for {image_size} px"
    return Throughput(best["images_per_s"] * scale, what)


def _nested(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def group_settings(group: Group) -> dict[str, Any]:
    """The model kind, batch size and image size of a group: its config file with the group's overrides."""
    with open(group.config) as f:
        config = yaml.safe_load(f) or {}
    value = {
        key: group.overrides.get(key, _nested(config, key))
        for key in (
            "model.class_path",
            "model.init_args.decoder",
            "data.batch_size",
            "data.image_size",
            "trainer.accelerator",
            "trainer.precision",
        )
    }
    decoder = {"spatial_broadcast": "sbd", "deconv": "deconv", "coordconv": "coordconv"}.get(
        value["model.init_args.decoder"] or "spatial_broadcast", "sbd"
    )
    factor = "factorvae-" if "FactorVAE" in str(value["model.class_path"]) else ""
    return {
        "kind": factor + decoder,
        "batch": int(value["data.batch_size"] or 16),
        "image_size": int(value["data.image_size"] or 64),
        "cpu": value["trainer.accelerator"] == "cpu",
        "precision": precision_name(value["trainer.precision"]),
    }


def estimate(sweep: Sweep, tasks: list[Task], folder: str | None) -> list[TaskCost]:
    rows = read_rows(folder)
    groups = {g.name: g for g in sweep.groups}
    costs = []
    for task in tasks:
        settings = group_settings(groups[task.group])
        images = sweep.steps * settings["batch"] * len(task.seeds)
        throughput = lookup(
            rows,
            settings["kind"],
            settings["batch"],
            len(task.seeds),
            settings["image_size"],
            settings["cpu"],
            settings["precision"],
        )
        costs.append(TaskCost(task, settings["kind"], images, throughput, settings["cpu"]))
    return costs


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
