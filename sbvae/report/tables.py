"""Report rows: groups (merged over the sweep's ``pool`` axes) with mean ± std over seeds beside the paper's row."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sbvae.paper import COLUMNS, target_row
from sbvae.report.collect import RunResult

# The paper's columns, then every other metric sbvae-eval can score, in the order a table prints them.
REPORT_COLUMNS = {
    **COLUMNS,
    "beta_vae": "BetaVAE",
    "dci": "DCI",
    "sap": "SAP",
    "modularity": "modularity",
    "irs": "IRS",
    "downstream": "downstream (LR)",
    "downstream_trees": "downstream (GBT)",
    "unsupervised": "Gaussian TC",
    "udr": "UDR",
}
# Printed precision per column, as the paper prints them (ELBO 329 (4.1), KL 24.4 (0.54), MIG 0.147 (0.057)).
DIGITS = {"elbo": 1, "nll": 1, "kl": 2, "latents_used": 2, "mig": 3, "factor_vae": 3}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for a single seed
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def stat(values: list[float]) -> Stat | None:
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


@dataclass
class Row:
    name: str
    groups: list[str]
    runs: list[RunResult]
    paper_key: str | None = None
    paper: dict[str, Any] | None = None
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.runs)

    @property
    def scored(self) -> list[RunResult]:
        return [r for r in self.runs if r.scores]

    @property
    def steps(self) -> list[int]:
        return sorted({r.global_step for r in self.scored})

    @property
    def devices(self) -> list[str]:
        return sorted({r.device for r in self.runs if r.device})


def row_name(group: dict[str, Any], pool: list[str], sweep_name: str) -> str:
    """A group's row: its grid labels without the pooled axes (all pooled: the sweep's name)."""
    if not pool:
        return group["name"]
    kept = [lab for key, lab in group["axes"].items() if key not in pool]
    return "_".join(kept) or sweep_name


def rows(manifest: dict[str, Any], results: list[RunResult]) -> list[Row]:
    by_name: dict[str, Row] = {}
    pool = manifest.get("pool") or []
    for group in manifest["groups"]:
        name = row_name(group, pool, manifest["name"])
        row = by_name.setdefault(name, Row(name, [], []))
        row.groups.append(group["name"])
        row.runs += [r for r in results if r.group == group["name"]]
    for row in by_name.values():
        columns = list(COLUMNS) + sorted({c for r in row.scored for c in r.scores} - set(COLUMNS))
        for column in columns:
            s = stat([r.scores[column] for r in row.scored if column in r.scores])
            if s is not None:
                row.stats[column] = s
        found = target_row(manifest.get("targets"), row.name)
        if found:
            row.paper_key, row.paper = found
    return list(by_name.values())


def fmt(column: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    digits = DIGITS.get(column, 3)
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else " (1 seed)")


def fmt_paper(value: list[float] | None) -> str:
    """The paper's numbers at the precision it printed them."""
    return "–" if not value else f"{value[0]:g} ± {value[1]:g}"


def markdown_table(manifest: dict[str, Any], table_rows: list[Row]) -> str:
    """Our row (mean ± std over scored seeds) and, under it, the paper's row where the targets have one."""
    columns = [c for c in REPORT_COLUMNS if any(c in r.stats or (r.paper or {}).get(c) for r in table_rows)]
    header = ["row", "source", "seeds scored / run", "diverged", "steps"] + [REPORT_COLUMNS[c] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paper_steps = (manifest.get("targets") or {}).get("data", {}).get("steps") or manifest.get("paper_steps")
    caveats = (manifest.get("targets") or {}).get("data", {}).get("caveats", {})
    marked = [c for c in columns if c in caveats and any((r.paper or {}).get(c) for r in table_rows)]
    for row in table_rows:
        counts = row.counts
        steps = ", ".join(f"{s:,}" for s in row.steps) or "–"
        cells = [f"**{row.name}**", "sbvae", f"{len(row.scored)} / {len(row.runs)}", str(counts["diverged"]), steps]
        cells += [fmt(c, row.stats[c].mean, row.stats[c].std) if c in row.stats else "–" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
        if row.paper:
            label = row.paper.get("label") or row.paper_key
            cells = ["", f"paper: {label}", "–", "–", f"{paper_steps:,}" if paper_steps else "–"]
            cells += [fmt_paper(row.paper.get(c)) + (" †" if c in marked and row.paper.get(c) else "") for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    for c in marked:
        lines += ["", f"† {COLUMNS[c]}: {caveats[c]}."]
    return "\n".join(lines)


def factor_vae_context(table_rows: list[Row]) -> str:
    """Each row's FactorVAE score beside what it means: chance for the dataset's factor count, the active
    dimensions it voted with, and the eval accuracy of each factor (means over the scored seeds)."""
    lines = []
    for row in table_rows:
        results = [
            r.evaluation["metrics"]["factor_vae"]
            for r in row.scored
            if "factor_vae" in ((r.evaluation or {}).get("metrics") or {})
        ]
        if not results:
            continue
        names = next(
            (
                r.evaluation["metrics"].get("mig", {}).get("factor_names")
                for r in row.scored
                if (r.evaluation or {}).get("metrics", {}).get("mig")
            ),
            None,
        )
        per_factor = [x.get("per_factor_accuracy") for x in results if x.get("per_factor_accuracy")]
        k = len(per_factor[0]) if per_factor else None
        chance = f"{1 / k:.3f}" if k else "–"
        active = stat([float(x["num_active_dims"]) for x in results if "num_active_dims" in x])
        accuracy = "–"
        if per_factor:
            names = names if names and len(names) == k else [f"factor {i}" for i in range(k)]
            accuracy = ", ".join(
                f"{n} {sum(p[i] for p in per_factor) / len(per_factor):.2f}" for i, n in enumerate(names)
            )
        score = row.stats.get("factor_vae")
        lines.append(
            f"| {row.name} | {fmt('factor_vae', score.mean, score.std) if score else '–'} | {chance} | "
            f"{fmt('latents_used', active.mean, active.std) if active else '–'} | {accuracy} |"
        )
    if not lines:
        return ""
    return "\n".join(
        [
            "| row | FactorVAE | chance (1 / factors) | active dimensions | eval accuracy per factor |",
            "|---|---|---|---|---|",
            *lines,
        ]
    )


def summary(manifest: dict[str, Any], table_rows: list[Row], folder: str) -> dict[str, Any]:
    """summary.json: each row's counts, steps, devices, statistics and paper numbers, and every run's scores."""
    return {
        "sweep": manifest["name"],
        "description": manifest.get("description"),
        "protocol": {
            "steps": manifest.get("steps"),
            "paper_steps": manifest.get("paper_steps"),
            "preset": manifest.get("preset"),
            "metrics": manifest.get("metrics"),
        },
        "targets": {"table": manifest["targets"]["table"], "source": manifest["targets"]["data"].get("source")}
        if manifest.get("targets")
        else None,
        "rows": [
            {
                "name": row.name,
                "groups": row.groups,
                "runs": len(row.runs),
                "scored": len(row.scored),
                "status": dict(sorted(row.counts.items())),
                "diverged": row.counts["diverged"],
                "steps": row.steps,
                "devices": row.devices,
                "stats": {c: s.as_dict() for c, s in row.stats.items()},
                "paper": {"row": row.paper_key, **row.paper} if row.paper else None,
                "seeds": [
                    {
                        "seed": r.seed,
                        "status": r.status,
                        "global_step": r.global_step,
                        "scores": r.scores,
                        "folder": os.path.relpath(r.folder, folder),
                        "rerun": r.rerun,
                    }
                    for r in row.runs
                ],
            }
            for row in table_rows
        ],
        "refused": manifest.get("refused", []),
    }
