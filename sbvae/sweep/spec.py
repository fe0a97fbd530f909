"""Sweep files: a base config, axes of dotted overrides and seeds, expanded into groups, tasks and runs.

    name: fig2                          # default: the file's stem
    description: Figure 2, SBD vs DeConv VAE on colored sprites
    base: ../sprites/vae-sbd.yaml       # paths are relative to the sweep file
    steps: 20000                        # the protocol: --trainer.max_steps of every run
    paper_steps: 1500000                # the paper's protocol, printed beside ours
    seeds: 15                           # a count (seeds 0..14) or a list [3, 4, 9]
    replicas: 15                        # at most this many seeds in one process (default: all)
    metrics: [elbo, mig, factor_vae]    # scored by sbvae-eval on each finished run
    preset: paper                       # sbvae-eval --preset
    overrides: {data.val_size: 1024}    # dotted sbvae-train overrides for every run
    grid:                               # the product of the axes; each point is one group
      config: {sbd: ../sprites/vae-sbd.yaml, deconv: ../sprites/vae-deconv.yaml}
      model.init_args.beta: [0.4, 1.0]  # a list (labels made from the values) or {label: value}
      # variant: {label: {key: value, ...}} sets several keys at once (config and dotted overrides), e.g.
      #   variant: {sbd: {config: ../sprites/vae-sbd.yaml}, deconv: {config: ..., model.init_args.lr: 1e-4}}
    pool: [model.init_args.decoder_options.shuffle_seed]   # axes the report merges into one row
    targets: colored-sprites            # a table of targets.yaml beside the sweep file (or {table:, rows:})
    figures: [mig_histogram, traversals]                   # default: every figure that applies

A group is one point of the grid: runs that share a config except the seed.  A task is one training
process: a block of consecutive seeds of one group, trained as replicas (``--replicas R``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from sbvae.errors import SBVAEError
from sbvae.paper import load_targets

KEYS = (
    "name",
    "description",
    "base",
    "steps",
    "paper_steps",
    "seeds",
    "replicas",
    "metrics",
    "preset",
    "overrides",
    "grid",
    "pool",
    "targets",
    "targets_file",
    "figures",
)
FIGURES = ("mig_histogram", "traversals", "rate_distortion", "latent_geometry")
DEFAULT_METRICS = ("elbo", "mig", "factor_vae")
# Overrides the sweep sets itself, with the sweep key that controls each.
RESERVED = {
    "seed_everything": "seeds",
    "trainer.max_steps": "steps",
    "trainer.logger": "(the sweep's --out)",
    "ckpt_path": "(resume is automatic)",
    "replicas": "replicas",
    "config": "base or grid.config",
}
_SAFE = re.compile(r"[^A-Za-z0-9.=+-]+")
VARIANT = "variant"  # a grid axis whose values are bundles of several overrides


@dataclass(frozen=True)
class Run:
    """One seed of one group, and the folder its sbvae-train process writes."""

    group: str
    seed: int
    folder: str  # relative to the sweep's output folder


@dataclass(frozen=True)
class Task:
    """One training process: consecutive seeds of a group, replica k being seed ``seeds[0] + k``."""

    group: str
    seeds: tuple[int, ...]

    @property
    def block(self) -> str:
        """The run folder's version name: seed_3, or seeds_0-4 for replicas."""
        first, last = self.seeds[0], self.seeds[-1]
        return f"seed_{first}" if len(self.seeds) == 1 else f"seeds_{first}-{last}"

    @property
    def name(self) -> str:
        return f"{self.group}/{self.block}"

    @property
    def folder(self) -> str:
        return os.path.join("runs", self.group, self.block)

    def runs(self) -> list[Run]:
        if len(self.seeds) == 1:
            return [Run(self.group, self.seeds[0], self.folder)]
        return [Run(self.group, s, os.path.join(self.folder, f"replica_{k}")) for k, s in enumerate(self.seeds)]


def block_seeds(block: str) -> tuple[int, ...]:
    """The seeds of a task folder's name (Task.block: seed_3, seeds_0-4), or () for any other name."""
    match = re.fullmatch(r"seed_(\d+)|seeds_(\d+)-(\d+)", block)
    if match is None:
        return ()
    if match[1] is not None:
        return (int(match[1]),)
    return tuple(range(int(match[2]), int(match[3]) + 1))


@dataclass(frozen=True)
class Group:
    """One point of the grid: a config and its overrides; its runs differ only in the seed."""

    name: str
    config: str  # absolute path of the base config
    overrides: dict[str, Any]  # dotted key -> value, the sweep's fixed overrides then the grid point's
    axes: dict[str, str]  # grid key -> label of this point
    values: dict[str, Any]  # grid key -> value of this point
    tasks: tuple[Task, ...]

    def runs(self) -> list[Run]:
        return [run for task in self.tasks for run in task.runs()]


@dataclass
class Sweep:
    name: str
    path: str
    description: str
    base: str
    steps: int
    paper_steps: int | None
    seeds: tuple[int, ...]
    replicas: int
    metrics: tuple[str, ...]
    preset: str
    overrides: dict[str, Any]
    grid: dict[str, dict[str, Any]]  # key -> {label: value}
    pool: tuple[str, ...]
    targets: dict[str, Any] | None  # {"table": name, "rows": {row name: target row}, "data": the table}
    figures: tuple[str, ...] | None
    groups: list[Group] = field(default_factory=list)

    def tasks(self) -> list[Task]:
        return [task for group in self.groups for task in group.tasks]

    def runs(self) -> list[Run]:
        return [run for group in self.groups for run in group.runs()]

    def manifest(self) -> dict[str, Any]:
        """The resolved sweep as JSON: what sbvae-report and sbvae-sweep status read."""
        return {
            "name": self.name,
            "path": self.path,
            "description": self.description,
            "steps": self.steps,
            "paper_steps": self.paper_steps,
            "seeds": list(self.seeds),
            "replicas": self.replicas,
            "metrics": list(self.metrics),
            "preset": self.preset,
            "pool": list(self.pool),
            "targets": self.targets,
            "figures": list(self.figures) if self.figures is not None else None,
            "groups": [
                {
                    "name": g.name,
                    "config": g.config,
                    "overrides": g.overrides,
                    "axes": g.axes,
                    "values": g.values,
                    "tasks": [
                        {
                            "name": t.name,
                            "seeds": list(t.seeds),
                            "folder": t.folder,
                            "runs": [{"seed": r.seed, "folder": r.folder} for r in t.runs()],
                        }
                        for t in g.tasks
                    ],
                }
                for g in self.groups
            ],
        }

    def resolved_file(self) -> dict[str, Any]:
        """The sweep file after --set, with absolute config paths: rerunnable from any folder (Slurm tasks)."""
        grid = {key: dict(points) for key, points in self.grid.items()}
        out = {
            "name": self.name,
            "description": self.description,
            "base": self.base,
            "steps": self.steps,
            "paper_steps": self.paper_steps,
            "seeds": list(self.seeds),
            "replicas": self.replicas,
            "metrics": list(self.metrics),
            "preset": self.preset,
            "overrides": self.overrides,
            "grid": grid,
            "pool": list(self.pool),
        }
        if self.targets:
            out["targets"] = {"table": self.targets["table"], "rows": self.targets["rows"]}
            out["targets_file"] = self.targets["file"]
        if self.figures is not None:
            out["figures"] = list(self.figures)
        return out


def _error(where: str, message: str) -> SBVAEError:
    return SBVAEError(f"{where}: {message}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as {KEY: YAML value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SBVAEError(f"--set expects KEY=VALUE (e.g. steps=200 or data.image_size=32), got {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_sets(raw: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """A sweep key (steps, seeds, ...) is replaced; a grid key gets new values; any other dotted key becomes an override."""
    raw = dict(raw)
    raw["grid"] = dict(raw.get("grid") or {})
    raw["overrides"] = dict(raw.get("overrides") or {})
    for key, value in sets.items():
        if key in KEYS:
            raw[key] = value
        elif key in raw["grid"]:
            raw["grid"][key] = value if isinstance(value, (list, dict)) else [value]
        elif "." in key:
            raw["overrides"][key] = value
        else:
            raise SBVAEError(
                f"--set {key}=...: {key!r} is neither a sweep key ({', '.join(KEYS)}) nor a dotted override such as data.image_size."
            )
    return raw


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _error(where, f"{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _seeds(where: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(_int(where, "seeds", value, 1)))
    if isinstance(value, list) and value:
        seeds = tuple(_int(where, "each seed", s, 0) for s in value)
        if len(set(seeds)) != len(seeds):
            raise _error(where, f"seeds repeat a value ({list(seeds)}): list each seed once.")
        return tuple(sorted(seeds))
    raise _error(where, f"seeds must be a count (e.g. 15) or a non-empty list of seeds, got {value!r}.")


def _check_override_key(where: str, key: Any) -> str:
    """A dotted sbvae-train key the sweep does not set itself ("config" passes: it is checked where it may appear)."""
    if not isinstance(key, str) or "." not in key and key != "config":
        raise _error(where, f"override key {key!r} must be a dotted sbvae-train key such as model.init_args.beta.")
    for reserved, instead in RESERVED.items():
        if key == reserved or key.startswith(reserved + "."):
            if key == "config":
                return key
            raise _error(where, f"{key} is set by the sweep itself; use {instead} instead.")
    return key


def label(key: str, value: Any) -> str:
    """A folder-safe label for a grid value: strings as they are, numbers and lists after the key's last part."""
    if key == "config" and isinstance(value, str):
        text = os.path.splitext(os.path.basename(value))[0]
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        text = key.rsplit(".", 1)[-1] + "x".join(json.dumps(v) for v in value)
    elif isinstance(value, dict):
        text = key.rsplit(".", 1)[-1] + "-".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    else:
        text = key.rsplit(".", 1)[-1] + json.dumps(value)
    return _SAFE.sub("-", text).strip("-") or "none"


def _axis(where: str, key: str, points: Any) -> dict[str, Any]:
    if isinstance(points, dict) and points:
        labels = {str(k): v for k, v in points.items()}
        bad = [k for k in labels if _SAFE.search(k) or not k[0].isalnum()]
        if bad:
            raise _error(
                where,
                f"grid {key}: labels {bad} must start with a letter or digit and use only letters, digits and . = + -.",
            )
        return labels
    if isinstance(points, list) and points:
        labels = {label(key, v): v for v in points}
        if len(labels) != len(points):
            raise _error(where, f"grid {key}: two values give the same label; write the axis as {{label: value}}.")
        return labels
    raise _error(where, f"grid {key} must be a non-empty list of values or a {{label: value}} mapping, got {points!r}.")


def _variant(where: str, folder: str, labels: dict[str, Any], grid_keys: list[str]) -> dict[str, dict[str, Any]]:
    """A variant axis: each label names a bundle of overrides (and optionally a config)."""
    out = {}
    for lab, bundle in labels.items():
        if not isinstance(bundle, dict) or not bundle:
            raise _error(
                where,
                f"grid variant {lab}: expected a mapping of keys to values (config, model.init_args.lr, ...), got {bundle!r}.",
            )
        bundle = {_check_override_key(where, k): v for k, v in bundle.items()}
        clash = sorted(set(bundle) & set(grid_keys))
        if clash:
            raise _error(
                where, f"grid variant {lab} sets {clash}, which are grid axes too; keep each key in one place."
            )
        if "config" in bundle:
            bundle["config"] = _config_path(where, folder, bundle["config"])
        out[lab] = bundle
    return out


def _config_path(where: str, folder: str, path: Any) -> str:
    if not isinstance(path, str):
        raise _error(where, f"a config must be a path to an sbvae-train YAML file, got {path!r}.")
    full = os.path.normpath(os.path.join(folder, os.path.expanduser(path)))
    if not os.path.isfile(full):
        raise _error(
            where, f"config {path} does not exist ({full}); config paths are relative to the sweep file's folder."
        )
    return full


def _targets(where: str, folder: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    spec = raw.get("targets")
    if spec is None:
        return None
    table, rows = None, {}
    if isinstance(spec, str):
        table = spec
    elif isinstance(spec, dict):
        table, rows = spec.get("table"), spec.get("rows") or {}
    if not isinstance(table, str) or not isinstance(rows, dict):
        raise _error(
            where,
            f"targets must name a table of the targets file, or be {{table: NAME, rows: {{row: target row}}}}, got {spec!r}.",
        )
    path = os.path.normpath(os.path.join(folder, raw.get("targets_file") or "targets.yaml"))
    tables = load_targets(path)
    if table not in tables:
        raise _error(where, f"targets table {table!r} is not in {path}; it has {', '.join(tables)}.")
    return {"table": table, "rows": dict(rows), "file": path, "data": tables[table]}


def _tasks(group: str, seeds: tuple[int, ...], replicas: int) -> tuple[Task, ...]:
    """Consecutive seeds in blocks of at most ``replicas``: replica k of a process is seed first + k."""
    blocks, current = [], [seeds[0]]
    for seed in seeds[1:]:
        if seed == current[-1] + 1 and len(current) < replicas:
            current.append(seed)
        else:
            blocks.append(current)
            current = [seed]
    blocks.append(current)
    return tuple(Task(group, tuple(b)) for b in blocks)


def build(raw: Any, path: str) -> Sweep:
    """Validate a sweep file's contents and expand the grid."""
    where = f"sweep file {path}"
    if not isinstance(raw, dict):
        raise _error(where, "expected a YAML mapping with at least base, steps and seeds.")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise _error(where, f"unknown key(s) {unknown}; a sweep file takes {', '.join(KEYS)}.")
    for key in ("base", "steps", "seeds"):
        if key not in raw:
            raise _error(where, f"missing key {key!r} (see configs/paper/README.md for the format).")
    folder = os.path.dirname(os.path.abspath(path))
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(name, str) or _SAFE.search(name):
        raise _error(where, f"name {name!r} must use only letters, digits and . = + -.")
    base = _config_path(where, folder, raw["base"])
    steps = _int(where, "steps", raw["steps"], 1)
    paper_steps = None if raw.get("paper_steps") is None else _int(where, "paper_steps", raw["paper_steps"], 1)
    seeds = _seeds(where, raw["seeds"])
    replicas = _int(where, "replicas", raw.get("replicas", len(seeds)), 1)
    metrics = raw.get("metrics", list(DEFAULT_METRICS))
    metrics = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else metrics
    from sbvae.evaluation import PRESETS, parse_metrics

    try:
        metrics = tuple(parse_metrics(list(metrics)))
    except (SBVAEError, TypeError) as error:
        raise _error(where, str(error)) from error
    preset = raw.get("preset", "paper")
    if preset not in PRESETS:
        raise _error(where, f"preset {preset!r} is unknown: choose one of {sorted(PRESETS)}.")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _error(where, "overrides must be a mapping of dotted keys to values.")
    overrides = {_check_override_key(where, k): v for k, v in overrides.items()}
    if "config" in overrides:
        raise _error(where, "set the config with base (or a grid axis named config), not in overrides.")
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise _error(where, "grid must be a mapping of dotted keys to lists of values.")
    if VARIANT in grid_raw and not isinstance(grid_raw[VARIANT], dict):
        raise _error(where, "grid variant must be a mapping {label: {key: value, ...}}.")
    grid = {_check_override_key(where, k) if k != VARIANT else k: _axis(where, k, v) for k, v in grid_raw.items()}
    if "config" in grid:
        grid["config"] = {lab: _config_path(where, folder, p) for lab, p in grid["config"].items()}
    if VARIANT in grid:
        grid[VARIANT] = _variant(where, folder, grid[VARIANT], [k for k in grid if k != VARIANT])
        if "config" in grid and any("config" in b for b in grid[VARIANT].values()):
            raise _error(where, "grid has both a config axis and variants that set config; keep config in one place.")
    clash = sorted(set(grid) & set(overrides))
    if clash:
        raise _error(where, f"{clash} appear both in overrides and in grid; keep each key in one place.")
    pool = tuple(raw.get("pool") or ())
    if not set(pool) <= set(grid):
        raise _error(
            where, f"pool names {sorted(set(pool) - set(grid))}, which are not grid keys ({', '.join(grid) or 'none'})."
        )
    figures = raw.get("figures")
    if figures is not None:
        figures = tuple(figures)
        if not set(figures) <= set(FIGURES):
            raise _error(
                where, f"unknown figure(s) {sorted(set(figures) - set(FIGURES))}; choose from {', '.join(FIGURES)}."
            )
    description = raw.get("description") or ""
    sweep = Sweep(
        name,
        os.path.abspath(path),
        str(description).strip(),
        base,
        steps,
        paper_steps,
        seeds,
        replicas,
        metrics,
        preset,
        overrides,
        grid,
        pool,
        _targets(where, folder, raw),
        figures,
    )
    sweep.groups = expand(sweep)
    return sweep


def expand(sweep: Sweep) -> list[Group]:
    """One group per point of the grid (keys in file order), named by its labels joined with '_'."""
    keys = list(sweep.grid)
    groups, names = [], set()
    for point in itertools.product(*(sweep.grid[k].items() for k in keys)):
        axes = {k: lab for k, (lab, _) in zip(keys, point)}
        values = {k: v for k, (_, v) in zip(keys, point)}
        name = "_".join(axes.values()) or sweep.name
        if name in names:
            raise SBVAEError(
                f"sweep {sweep.name}: two grid points are both named {name!r}; label the axes with {{label: value}}."
            )
        names.add(name)
        bundle = dict(values.get(VARIANT, {}))
        config = bundle.pop("config", values.get("config", sweep.base))
        axis_values = {k: v for k, v in values.items() if k not in ("config", VARIANT)}
        overrides = {**sweep.overrides, **bundle, **axis_values}
        groups.append(Group(name, config, overrides, axes, values, _tasks(name, sweep.seeds, sweep.replicas)))
    return groups


def load_sweep(path: str, sets: list[str] | None = None) -> Sweep:
    """Read, apply ``--set`` items and expand a sweep file."""
    if not os.path.isfile(path):
        raise SBVAEError(f"sweep file {path} does not exist: pass a file such as configs/paper/smoke.yaml.")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise SBVAEError(
            f"sweep file {path} is not valid YAML ({error.__class__.__name__}); fix the line it names."
        ) from error
    if sets:
        raw = apply_sets(raw if isinstance(raw, dict) else {}, parse_set(sets))
    return build(raw, path)


def select(sweep: Sweep, only: list[str] | None) -> list[Task]:
    """The tasks named by --only: group names, task names (group/seeds_0-4) or shell patterns of either."""
    tasks = sweep.tasks()
    if not only:
        return tasks
    import fnmatch

    chosen = [t for t in tasks if any(fnmatch.fnmatchcase(t.group, p) or fnmatch.fnmatchcase(t.name, p) for p in only)]
    missing = [
        p for p in only if not any(fnmatch.fnmatchcase(t.group, p) or fnmatch.fnmatchcase(t.name, p) for t in tasks)
    ]
    if missing:
        names = ", ".join(g.name for g in sweep.groups)
        raise SBVAEError(f"--only {' '.join(missing)} matches no group of sweep {sweep.name}; its groups are {names}.")
    return chosen
