"""The paper's numbers, read from configs/paper/targets.yaml (data, not code, so a table is one edit away).

Sweeps check a sweep file's targets against them and reports print them beside the measured rows; both read
them here, so neither imports the other for them.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from sbvae.errors import SBVAEError

# The metric columns of the paper's tables, in its order (Tables 5-10), with their printed names.
COLUMNS = {
    "elbo": "ELBO",
    "nll": "NLL",
    "kl": "KL",
    "latents_used": "latents used",
    "mig": "MIG",
    "factor_vae": "FactorVAE",
}


def load_targets(path: str) -> dict[str, dict[str, Any]]:
    """{table name: {"source", "steps", "rows": {row: {"label", column: [mean, std] | null}}, "caveats": {column:
    why its paper numbers are not comparable}}}, checked; the file's top-level ``caveats`` apply to every table."""
    if not os.path.isfile(path):
        raise SBVAEError(
            f"targets file {path} does not exist; put targets.yaml beside the sweep file or name it with targets_file."
        )
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    tables = raw.get("tables") if isinstance(raw, dict) else None
    if not isinstance(tables, dict) or not tables:
        raise SBVAEError(f"targets file {path} needs a mapping 'tables: {{NAME: {{rows: ...}}}}'.")
    caveats = raw.get("caveats") or {}
    if (
        not isinstance(caveats, dict)
        or set(caveats) - set(COLUMNS)
        or not all(isinstance(v, str) for v in caveats.values())
    ):
        raise SBVAEError(
            f"targets file {path}: caveats must map columns ({', '.join(COLUMNS)}) to a sentence, got {caveats!r}."
        )
    for name, table in tables.items():
        rows = table.get("rows") if isinstance(table, dict) else None
        if not isinstance(rows, dict) or not rows:
            raise SBVAEError(f"targets file {path}: table {name} needs a mapping 'rows'.")
        for row_name, row in rows.items():
            for column, value in row.items():
                if column == "label":
                    continue
                if column not in COLUMNS:
                    raise SBVAEError(
                        f"targets file {path}: {name}/{row_name} has column {column!r}; columns are {', '.join(COLUMNS)}."
                    )
                ok = value is None or (
                    isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                )
                if not ok:
                    raise SBVAEError(
                        f"targets file {path}: {name}/{row_name}.{column} must be [mean, std] or null, got {value!r}."
                    )
        table["caveats"] = dict(caveats)  # columns whose paper numbers are printed but not comparable, and why
    return tables


def target_row(targets: dict[str, Any] | None, row: str) -> tuple[str, dict[str, Any]] | None:
    """(row key, the paper's row) for a report row: the sweep's explicit mapping, else the same name."""
    if not targets:
        return None
    key = targets.get("rows", {}).get(row, row)
    found = targets["data"]["rows"].get(key)
    return (key, found) if found is not None else None
