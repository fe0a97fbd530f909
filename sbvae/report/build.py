"""Building a report: tables, figures, report.md, summary.json, and the figures in TensorBoard."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sbvae.paper import load_targets
from sbvae.report import figures as F
from sbvae.report.collect import RunResult, collect, load_manifest, write_json
from sbvae.report.tables import REPORT_COLUMNS, Row, factor_vae_context, markdown_table, rows, summary

HEADINGS = {
    "mig_histogram": "MIG histograms",
    "rate_distortion": "Rate-distortion",
    "latent_geometry": "Latent geometry",
    "traversals": "Traversals",
}
CAPTIONS = {
    "mig_histogram": "MIG over seeds (paper Figures 2, 3): one histogram per row; stars mark the best and the worst seed.",
    "rate_distortion": "Rate-distortion (paper Figure 4): NLL against KL and against MIG, one small point per run, the mean per beta joined.",
    "latent_geometry": "Latent geometry (paper Figures 7, 8, 13-22): a grid of the two factors encoded and drawn in the two latents with the smallest mean posterior variance; grid lines join neighbours, held-out points are black.",
    "traversals": "Traversals of the median-MIG seed of each row: each latent from -2 to +2 around a validation image, rows sorted by mean posterior variance and labelled with the latent, its mean posterior std and its mean KL.",
}


@dataclass
class Picture:
    kind: str
    title: str
    file: str


@dataclass
class Report:
    manifest: dict[str, Any]
    results: list[RunResult]
    rows: list[Row]
    out: str
    folder: str  # the sweep's folder (absolute): run folders are shown relative to it
    shown_folder: str  # the same as the user named it, for report.md
    pictures: list[Picture] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", name).strip("-") or "row"


def representatives(row: Row) -> dict[str, RunResult]:
    """best / worst / median seed by MIG among runs with a checkpoint; without MIG, the first such run for all three."""
    usable = [r for r in row.runs if r.status == "completed" and r.checkpoint]
    if not usable:
        return {}
    ranked = sorted((r for r in usable if "mig" in r.scores), key=lambda r: r.scores["mig"])
    if not ranked:
        return {"best": usable[0], "worst": usable[0], "median": usable[0]}
    return {"best": ranked[-1], "worst": ranked[0], "median": ranked[(len(ranked) - 1) // 2]}


def describe(run: RunResult, what: str) -> str:
    mig = f", MIG {run.scores['mig']:.3f}" if "mig" in run.scores else ""
    return f"{what} seed {run.seed}{mig}"


class Models:
    """Loaded checkpoints, each once; TensorBoard writers of the runs the figures belong to."""

    def __init__(self, device: str, tensorboard: bool):
        self.device, self.tensorboard = device, tensorboard
        self._models: dict[str, Any] = {}

    def get(self, run: RunResult):
        if run.folder not in self._models:
            from sbvae.report.probes import load_run

            self._models[run.folder] = load_run(run.checkpoint, self.device)
        return self._models[run.folder]

    def to_tensorboard(self, folder: str, tag: str, fig, step: int) -> None:
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(folder) as writer:
            writer.add_figure(tag, fig, step, close=False)


def _figure(
    report: Report, models: Models, kind: str, title: str, name: str, fig, run: RunResult | None = None
) -> None:
    path = os.path.join(report.out, name)
    F.save(fig, path)
    report.pictures.append(Picture(kind, title, name))
    if run is not None:
        models.to_tensorboard(run.folder, f"report/{kind}", fig, run.global_step)
    else:
        models.to_tensorboard(os.path.join(report.out, "tensorboard"), f"report/{os.path.splitext(name)[0]}", fig, 0)
    F.plt.close(fig)


def mig_histograms(report: Report, models: Models) -> None:
    series = [(row.name, [(r.seed, r.scores["mig"]) for r in row.scored if "mig" in r.scores]) for row in report.rows]
    series = [s for s in series if s[1]]
    if not series:
        report.notes.append("MIG histograms: no run has a MIG score (add mig to the sweep's metrics).")
        return
    from sbvae.report.probes import traversal

    pictures = {}
    for row in report.rows:
        reps = representatives(row)
        if "best" in reps:
            best = traversal(*models.get(reps["best"]))
            worst = traversal(*models.get(reps["worst"]))
            pictures[row.name] = (best, worst)
    _figure(report, models, "mig_histogram", "MIG over seeds", "mig_histograms.png", F.mig_histograms(series, pictures))


def traversals(report: Report, models: Models) -> None:
    from sbvae.report.probes import traversal

    for row in report.rows:
        run = representatives(row).get("median")
        if run is None:
            continue
        title = f"{row.name}: {describe(run, 'median' if 'mig' in run.scores else 'first')}"
        _figure(
            report,
            models,
            "traversals",
            title,
            f"traversals-{slug(row.name)}.png",
            F.traversal_figure(traversal(*models.get(run)), title),
            run,
        )


def beta_axis(manifest: dict[str, Any]) -> str | None:
    """The grid key of beta (model.init_args.beta), when the sweep varies it."""
    keys = {k for g in manifest["groups"] for k in g.get("values", {}) if k.rsplit(".", 1)[-1] == "beta"}
    key = next(iter(sorted(keys)), None)
    return key if key and len({repr(g["values"].get(key)) for g in manifest["groups"]}) > 1 else None


def rate_distortion_series(
    manifest: dict[str, Any], results: list[RunResult], key: str
) -> dict[str, list[dict[str, float]]]:
    """One series per setting of the other grid axes (e.g. sbd, deconv): each scored run's beta and scores."""
    series: dict[str, list[dict[str, float]]] = {}
    by_group = {g["name"]: g for g in manifest["groups"]}
    for run in results:
        group = by_group[run.group]
        if "nll" not in run.scores:
            continue
        name = "_".join(lab for k, lab in group["axes"].items() if k != key) or manifest["name"]
        series.setdefault(name, []).append({"beta": float(group["values"][key]), **run.scores})
    return series


def rate_distortion(report: Report, models: Models) -> None:
    key = beta_axis(report.manifest)
    if key is None:
        report.notes.append("Rate-distortion: the sweep does not vary beta (a grid axis model.init_args.beta).")
        return
    series = rate_distortion_series(report.manifest, report.results, key)
    if not series:
        report.notes.append("Rate-distortion: no run has ELBO scores (add elbo to the sweep's metrics).")
        return
    _figure(
        report, models, "rate_distortion", "Rate-distortion over beta", "rate_distortion.png", F.rate_distortion(series)
    )


def latent_geometry(report: Report, models: Models, points: int) -> None:
    from sbvae.report.probes import geometry_factors
    from sbvae.report.probes import latent_geometry as geometry

    same_data: dict[str, list] = {}
    for row in report.rows:
        reps = representatives(row)
        if not reps:
            continue
        chosen = [("best", reps["best"])] + ([("worst", reps["worst"])] if reps["worst"] is not reps["best"] else [])
        data = models.get(chosen[0][1])[1].data
        if geometry_factors(data) is None:
            note = (
                f"Latent geometry: skipped for {data.name}, which has {len(data.factor_names)} factors "
                f"({', '.join(data.factor_names)}); the plot needs a two-factor dataset (circles-xy, -xh, -rg)."
            )
            if note not in report.notes:
                report.notes.append(note)
            continue
        entries = []
        for what, run in chosen:
            model, datamodule = models.get(run)
            entries.append((f"{row.name}: {describe(run, what)}", geometry(model, datamodule.data, points)))
        fig = F.latent_geometry(entries)
        _figure(
            report,
            models,
            "latent_geometry",
            f"{row.name}: latent geometry",
            f"geometry-{slug(row.name)}.png",
            fig,
            chosen[0][1],
        )
        dataset = (chosen[0][1].evaluation or {}).get("dataset") or {"name": data.name}
        same_data.setdefault(
            json.dumps(
                {k: dataset.get(k) for k in ("dataset", "dataset_options", "name", "image_size")}, sort_keys=True
            ),
            [],
        ).extend(entries)
    lines = [entries for entries in same_data.values() if len({title.split(":")[0] for title, _ in entries}) > 1]
    if lines:  # rows trained on the same data (SBD and DeConv, say) side by side, one line per dataset
        _figure(
            report,
            models,
            "latent_geometry",
            "latent geometry side by side",
            "geometry-side-by-side.png",
            F.latent_geometry_lines(lines),
        )


def applicable(report: Report) -> list[str]:
    """The sweep's figures, or by default every figure its runs allow."""
    chosen = report.manifest.get("figures")
    if chosen:
        return list(chosen)
    kinds = []
    if any("mig" in r.scores for r in report.results):
        kinds.append("mig_histogram")
    if beta_axis(report.manifest):
        kinds.append("rate_distortion")
    if any(r.checkpoint for r in report.results if r.status == "completed"):
        kinds += ["latent_geometry", "traversals"]
    return kinds


def markdown(report: Report) -> str:
    m = report.manifest
    counts = {}
    for r in report.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    devices = sorted({r.device for r in report.results if r.device})
    steps = f"{m['steps']:,} steps per run" if m.get("steps") else "steps as each run's status says"
    paper = f" (paper: {m['paper_steps']:,})" if m.get("paper_steps") else ""
    lines = [f"# Sweep {m['name']}", ""]
    if m.get("description"):
        lines += [m["description"], ""]
    lines += [
        f"- Protocol: {steps}{paper}; scored with {', '.join(m.get('metrics') or ['the metrics found'])} at the {m.get('preset')} preset.",
        f"- Runs: {len(report.results)} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ").",
        f"- Trained on: {', '.join(devices) or 'unknown'}.",
        "- Table cells: mean ± sample standard deviation over the scored seeds of the row; the paper's row below ours.",
    ]
    short = [r for r in report.results if r.status == "completed" and m.get("steps") and r.global_step < m["steps"]]
    if short:
        lines.append(
            f"- {len(short)} completed run(s) stopped short of the protocol's {m['steps']:,} steps (e.g. "
            f"{short[0].group} seed {short[0].seed} at {short[0].global_step:,}): rerun the sweep to train them on."
        )
    sizes = sorted({r.evaluation.get("dataset", {}).get("image_size") for r in report.results if r.evaluation} - {None})
    if m.get("targets") and any(size != 64 for size in sizes):
        lines.append(
            f"- ELBO, NLL and KL are nats per image: these runs use {', '.join(f'{s} px' for s in sizes)} images, the paper "
            "64 px, so those three columns are not comparable with the paper's; MIG is."
        )
    if m.get("targets"):
        lines.append(
            f"- Paper numbers: table {m['targets']['table']} of {os.path.basename(m['targets'].get('file', 'targets.yaml'))} "
            f"({m['targets']['data'].get('source', '')})."
        )
    lines += ["", "## Results", "", markdown_table(m, report.rows), ""]
    context = factor_vae_context(report.rows)
    if context:
        lines += [
            "### The FactorVAE score in context",
            "",
            "disentanglement_lib's protocol (docs/metrics.md): a code whose active dimensions tell no factor apart "
            "scores chance (1 / factors), and a code with no active dimension scores 0; the quick preset's score "
            "moves by about ±0.05 between seeds, so it is a smoke check, not a result.",
            "",
            context,
            "",
        ]
    if report.pictures:
        lines += ["## Figures", ""]
        for kind in CAPTIONS:
            pics = [p for p in report.pictures if p.kind == kind]
            if pics:
                lines += [f"### {HEADINGS[kind]}", "", CAPTIONS[kind], ""]
                lines += [f"![{p.title}]({p.file})" for p in pics] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    columns = [c for c in REPORT_COLUMNS if any(c in r.scores for r in report.results)]
    row = lambda cells: "| " + " | ".join(cells) + " |"  # one cell per column, none empty when no score is
    lines += [
        "## Runs",
        "",
        f"Folders are relative to the sweep folder {report.shown_folder}.",
        "",
        row(["group", "seed", "status", "step", *(REPORT_COLUMNS[c] for c in columns), "folder"]),
        "|" + "---|" * (len(columns) + 5),
    ]
    for r in report.results:
        cells = [f"{r.scores[c]:.4g}" if c in r.scores else "–" for c in columns]
        lines.append(
            row(
                [r.group, str(r.seed), r.status, f"{r.global_step:,}", *cells, os.path.relpath(r.folder, report.folder)]
            )
        )
    refused = m.get("refused") or []
    if refused:
        lines += ["", "## Runs not pooled", "", f"{len(refused)} run folder(s) found but left out of every row:", ""]
        lines += [f"- {r['folder']} (seed {r['seed']}): {r['reason']}" for r in refused]
    lines += [
        "",
        "## Rerun one seed",
        "",
        "Each seed trains alone (replica k of a replica set is the single run of seed base + k) and is scored "
        "as here with these commands; summary.json holds them for every seed.",
        "",
    ]
    for group in dict.fromkeys(r.group for r in report.results):
        first = next(r for r in report.results if r.group == group and r.rerun)
        lines += [f"{group}, seed {first.seed}:", "", "```bash", *first.rerun, "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def build_report(
    folder: str,
    out: str | None = None,
    device: str = "cpu",
    tensorboard: bool = True,
    targets_file: str | None = None,
    geometry_points: int = 16,
    echo: Callable[[str], None] = print,
) -> Report:
    manifest = load_manifest(folder)
    if targets_file and manifest.get("targets"):
        table = manifest["targets"]["table"]
        manifest["targets"] = {**manifest["targets"], "file": targets_file, "data": load_targets(targets_file)[table]}
    results = collect(folder, manifest)
    report = Report(
        manifest,
        results,
        rows(manifest, results),
        out or os.path.join(folder, "report"),
        os.path.abspath(folder),
        folder,
    )
    os.makedirs(report.out, exist_ok=True)
    stale = [r for r in results if r.stale_step is not None]
    if stale:
        report.notes.append(
            f"{len(stale)} completed run(s) trained on after their scores (e.g. {os.path.relpath(stale[0].folder, folder)}: "
            f"scores of step {stale[0].stale_step}, checkpoint at step {stale[0].global_step}), so they are left out: "
            "rescore them with sbvae-eval --ckpt <run folder> (sbvae-sweep run rescores a sweep's)."
        )
        echo(report.notes[-1])
    models = Models(device, tensorboard)
    for kind in applicable(report):
        drawn = len(report.pictures)
        if kind == "mig_histogram":
            mig_histograms(report, models)
        elif kind == "traversals":
            traversals(report, models)
        elif kind == "rate_distortion":
            rate_distortion(report, models)
        elif kind == "latent_geometry":
            latent_geometry(report, models, geometry_points)
        count = len(report.pictures) - drawn
        echo(
            f"drew {count} {kind.replace('_', ' ')} figure(s)"
            if count
            else f"no {kind.replace('_', ' ')} for these runs"
        )
    with open(os.path.join(report.out, "report.md"), "w") as f:
        f.write(markdown(report))
    data = summary(manifest, report.rows, report.folder)
    data["figures"] = [{"kind": p.kind, "title": p.title, "file": p.file} for p in report.pictures]
    data["notes"] = report.notes
    write_json(os.path.join(report.out, "summary.json"), data)
    return report
