"""The docs' GPU figures, written from the committed throughput files: one source for every GPU number.

    python benchmarks/gpu_tables.py --take RESULTS   # copy a GPU check's throughput files in, then rewrite
    python benchmarks/gpu_tables.py            # rewrite the generated blocks from benchmarks/results
    python benchmarks/gpu_tables.py --check    # exit 1 naming each block that differs from the files

A generated block sits between ``<!-- gpu_tables: NAME -->`` and ``<!-- /gpu_tables -->``; nothing outside
the blocks is touched.
  docs/performance.md, ``gpu``: benchmarks/results/throughput-cuda.json, -bf16.json and -largest.json (what
      benchmarks/gpu_check.py writes) against the goals: one run >= 10,000 img/s at batch 16 and >= 3x the
      plain PyTorch loop of the same run; replicas >= 50,000 img/s.
  configs/paper/README.md, ``device-time``: the paper's sweep files; a GPU sweep's runs and device time are
      ``sbvae-sweep run --dry-run``'s, and the paragraph below the table names the throughput they assume.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- gpu_tables: {} -->", "<!-- /gpu_tables -->"
GOAL_SINGLE, GOAL_RATIO, GOAL_REPLICAS, GOAL_REPLICAS_AT = 10_000, 3.0, 50_000, 15
FILES = {
    "fp32": "throughput-cuda.json",
    "bf16": "throughput-cuda-bf16.json",
    "largest": "throughput-cuda-largest.json",
}
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "largest": "32-true"}
LINK = re.compile(r"\[([^\]]+\.yaml)\]\(([^)]+)\)")


class TablesError(Exception):
    pass


def read_results(folder: str) -> dict[str, dict]:
    """The GPU check's files in ``folder`` that exist, by kind, each checked: a throughput file of the
    precision its name says, measured on a GPU, all on the same one."""
    found = {}
    for kind, name in FILES.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        data, problem = load(path)
        if problem:
            raise TablesError(
                f"{path} is not a throughput file of benchmarks/throughput.py ({problem}): "
                "take it again from the GPU check's results"
            )
        if str(data.get("device", "")).lower().startswith("cpu"):
            raise TablesError(
                f"{path} was measured on {data['device']}: a rehearsal's file, not a GPU's. "
                "Remove it and take the files of a GPU run of benchmarks/gpu_check.py."
            )
        precision = data.get("precision", "32-true")
        if precision != PRECISIONS[kind]:
            raise TablesError(
                f"{path} holds {precision} figures, but its name is for {PRECISIONS[kind]} ones: "
                "throughput.py names its file by precision unless --json says otherwise; rename or remeasure it"
            )
        found[kind] = data
    devices = sorted({str(data.get("device")) for data in found.values()})
    if len(devices) > 1:
        raise TablesError(
            f"the throughput files in {folder} come from different devices ({', '.join(devices)}): "
            "take the files of one GPU check together (--take RESULTS replaces the whole set)"
        )
    return found


def load(path: str) -> tuple[dict | None, str | None]:
    """(the file's throughput data, None), or (None, what keeps it from being throughput.py's output)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        return None, str(error)
    problem = malformed(data)
    return (None, problem) if problem else (data, None)


def malformed(data) -> str | None:
    """What keeps ``data`` from being throughput.py's output, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("results"), list):
        return "no list of results"
    for row in data["results"]:
        if not isinstance(row, dict) or not isinstance(row.get("images_per_s"), (int, float)):
            return f"a row without images_per_s: {str(row)[:80]}"
        if not isinstance(row.get("replicas", 1), int) or not isinstance(row.get("peak_memory_gib") or 0, (int, float)):
            return f"a row with a bad replica count or peak memory: {str(row)[:80]}"
    errors = data.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        return "errors is not a list of objects"
    return None


def take(results: str, root: str) -> tuple[list[str], list[str]]:
    """Replace benchmarks/results' GPU check files by those of ``results``, all checked before any is
    touched: (copied, removed). A file the new check lacks is removed, so two checks never mix."""
    target = os.path.join(root, "benchmarks", "results")
    if os.path.isdir(results) and os.path.samefile(results, target):
        raise TablesError(f"{results} is benchmarks/results itself: run without --take to rewrite the docs from it")
    found = read_results(results)
    if not found:
        raise TablesError(f"{results} holds none of {', '.join(FILES.values())}: give the GPU check's results folder")
    copied, removed = [], []
    for kind, name in FILES.items():
        if kind in found:
            shutil.copyfile(os.path.join(results, name), os.path.join(target, name))
            copied.append(name)
        elif os.path.isfile(os.path.join(target, name)):
            os.remove(os.path.join(target, name))
            removed.append(name)
    return copied, removed


def _row(data: dict | None, path: str, replicas: int = 1) -> dict | None:
    if not data:
        return None
    return next(
        (
            r
            for r in data.get("results", [])
            if r.get("model") == "sbd" and r.get("path") == path and r.get("replicas", 1) == replicas
        ),
        None,
    )


def _rate(row: dict | None) -> str:
    return f"{row['images_per_s']:,.0f} img/s" if row else "not measured"


def _ratio(row: dict | None, base: dict | None) -> float | None:
    return row["images_per_s"] / base["images_per_s"] if row and base else None


def _met(ok: bool | None) -> str:
    return "" if ok is None else ": **met**" if ok else ": **not met**"


def memory_per_replica(data: dict | None) -> tuple[float, int, int] | None:
    """GiB per replica by the peaks of the two largest replica sets (the single run has no replica program),
    the line throughput.py predicts the largest count by; None without two counts or a peak that grows."""
    peaks = {
        r["replicas"]: r["peak_memory_gib"]
        for r in (data or {}).get("results", [])
        if r.get("model") == "sbd"
        and r.get("path") == "trainer"
        and r.get("replicas", 1) > 1
        and r.get("peak_memory_gib")
    }
    if len(peaks) < 2:
        return None
    (r0, m0), (r1, m1) = sorted(peaks.items())[-2:]
    return ((m1 - m0) / (r1 - r0), r0, r1) if m1 > m0 else None


def gpu_block(results: dict[str, dict]) -> list[str]:
    single = f">= {GOAL_SINGLE:,} img/s and >= {GOAL_RATIO:g}x"
    replicas = f">= {GOAL_REPLICAS:,} img/s"
    if not results:
        return [
            "**The GPU figures are still owed**: no `benchmarks/results/throughput-cuda*.json` exists yet, so no",
            "throughput of the CUDA-graph step, of replicas on a GPU or of bf16 has been recorded.",
            "[benchmarks/README.md](../benchmarks/README.md) has the one command that measures them. The goals:",
            "",
            f"- one run of the SBD VAE at batch 16: {single} the plain PyTorch loop of the same run, in sbvae-train's loop;",
            f"- {GOAL_REPLICAS_AT} or more replicas: {replicas}.",
        ]
    fp32, bf16, largest = (results.get(k) for k in ("fp32", "bf16", "largest"))
    first = fp32 or bf16 or largest
    names = ", ".join(f"[{FILES[k]}](../benchmarks/results/{FILES[k]})" for k in FILES if k in results)
    lines = [
        *wrap(
            f"Measured on one {first.get('device', 'unknown GPU')} with torch {first.get('torch', '?')} and "
            f"lightning {first.get('lightning', '?')}, the paper's SBD VAE at {first.get('image_size', 64)} px on "
            f"colored sprites, by `benchmarks/gpu_check.py` ({names})."
        ),
        "",
        "| what | images/s | x the plain loop | goal |",
        "|---|---|---|---|",
    ]
    for label, data in (("fp32", fp32), ("bf16-mixed", bf16)):
        naive, step, trainer = (_row(data, p) for p in ("naive", "step", "trainer"))
        ratio = _ratio(trainer, naive)
        ok = None
        if label == "fp32":
            ok = (
                None
                if trainer is None or ratio is None
                else trainer["images_per_s"] >= GOAL_SINGLE and ratio >= GOAL_RATIO
            )
        lines += [
            f"| one run, sbvae-train's loop, {label} | {_rate(trainer)} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} | {single if label == 'fp32' else '-'}{_met(ok)} |",
            f"| one run, sbvae's step alone, {label} | {_rate(step)} | "
            f"{f'{_ratio(step, naive):.2f}x' if _ratio(step, naive) else '-'} | - |",
            f"| one run, the plain PyTorch loop, {label} | {_rate(naive)} | {'1x' if naive else '-'} | - |",
        ]
    naive = _row(fp32, "naive")
    replica_rows = sorted(
        (
            dict(r, probe=data is largest)
            for data in (fp32, largest)
            if data
            for r in data["results"]
            if r.get("model") == "sbd" and r.get("path") in ("trainer", "step") and r.get("replicas", 1) > 1
        ),
        key=lambda r: (r["replicas"], r["probe"], r["path"] != "trainer"),
    )
    probe_steps = ((largest or {}).get("timing") or {}).get("trainer_steps")
    for r in replica_rows:
        ratio = _ratio(r, naive)
        memory = f", peak {r['peak_memory_gib']:.1f} GiB reserved" if r.get("peak_memory_gib") else ""
        # The goal is the real loop's: the step alone is shown beside it, as for one run.
        trainer = r["path"] == "trainer"
        # A probe of a few steps shows what fits, not a rate to hold against the goal.
        judged = trainer and not r["probe"] and r["replicas"] >= GOAL_REPLICAS_AT
        ok = r["images_per_s"] >= GOAL_REPLICAS if judged else None
        what = ("sbvae-train's loop" if trainer else "sbvae's step alone") + (
            f" (the largest-count probe{f', {probe_steps} steps' if probe_steps else ''})" if r["probe"] else ""
        )
        lines.append(
            f"| {r['replicas']} replicas, {what}, fp32{memory} | {_rate(r)} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} | {replicas if ok is not None else '-'}{_met(ok)} |"
        )
    lines.append("")
    per = memory_per_replica(fp32)
    fit = ((fp32 or {}).get("largest_replicas_that_fit") or {}).get("sbd")
    memory = (fp32 or {}).get("gpu_memory_gib")
    if per:
        lines.append(
            f"- Memory per replica: {per[0]:.3f} GiB, by the peaks of {per[1]} and {per[2]} replicas"
            + (
                f"; throughput.py's line through them predicts about {fit} replicas in the card's {memory:.0f} GiB."
                if fit and isinstance(memory, (int, float))
                else "."
            )
        )
    elif fp32:
        lines.append("- Memory per replica: not measured (it needs two replica sets whose peaks grow with the count).")
    for kind, data in results.items():
        for error in data.get("errors", []):
            lines.append(f"- Failed in {FILES[kind]}: {error.get('row', '?')}: {error.get('error', '?')}")
    missing = [FILES[k] for k in FILES if k not in results]
    if missing:
        lines.append(f"- Not measured yet: {', '.join(missing)}.")
    while lines[-1] == "":
        lines.pop()
    return lines


def device_time_block(root: str, block: list[str]) -> list[str]:
    """The paper table with each GPU sweep's runs and device time recomputed, then the assumed throughput."""
    from sbvae.sweep.estimate import duration, estimate, results_folder
    from sbvae.sweep.spec import load_sweep

    folder = os.path.join(root, "configs", "paper")
    table, measured, assumed_kinds = [], set(), set()
    for line in block:
        if not line.startswith("|"):
            break
        cells = line.split(" | ")
        link = LINK.search(cells[1]) if len(cells) >= 5 else None
        if link:
            path = os.path.join(folder, link.group(2))
            sweep = load_sweep(path)
            tasks = sweep.tasks()
            costs = estimate(sweep, tasks, results_folder(path))
            if not any(c.cpu for c in costs):  # a CPU sweep's cell is a measured wall time, kept as written
                cells[-2] = str(sum(len(t.seeds) for t in tasks))
                cells[-1] = f"{duration(sum(c.seconds for c in costs))} |"
                for c in costs:
                    if c.throughput.source.startswith("throughput-cuda"):
                        measured.add(c.throughput.source.split(":")[0])
                    else:
                        assumed_kinds.add(c.kind)
        table.append(" | ".join(cells))
    default = (
        "1,470 images/s per training process: sbvae-train's real loop on one H100 at batch 16, measured before the"
        " fast step existed, with the seeds of a group trained one after another"
    )
    if measured:
        assumed = (
            f"GPU sweeps are timed by sbvae-train's loop as measured in {', '.join(sorted(measured))}, in "
            "benchmarks/results: each training process by the row of its model, batch, precision and replica "
            "count, scaled by pixel count to its image size."
        )
        if assumed_kinds:
            assumed += f" No GPU row measures {', '.join(sorted(assumed_kinds))}: those processes assume {default}."
    else:
        assumed = (
            f"No GPU has measured a `benchmarks/results/throughput-cuda*.json` yet, so GPU sweeps assume {default}. "
            "Once a GPU file exists, with `replicas` rows for replica-parallel training, `--dry-run` uses it and "
            "`python benchmarks/gpu_tables.py` rewrites this table."
        )
    return [
        *table,
        "",
        *wrap(
            f"Device time is `--dry-run`'s estimate, and `--dry-run` says which figure it used. {assumed} The CPU "
            "sweeps keep their measured wall times; `--dry-run` times them by the committed "
            "`benchmarks/results/throughput-cpu*.json`."
        ),
    ]


def wrap(paragraph: str) -> list[str]:
    return textwrap.wrap(paragraph, width=110, break_long_words=False, break_on_hyphens=False)


BLOCKS = {
    "gpu": (
        os.path.join("docs", "performance.md"),
        lambda root, old: gpu_block(read_results(os.path.join(root, "benchmarks", "results"))),
    ),
    "device-time": (os.path.join("configs", "paper", "README.md"), device_time_block),
}


def regenerate(root: str) -> dict[str, tuple[str, str]]:
    """Each file's text now and with its blocks rewritten, by path."""
    texts = {}
    for name, (relative, make) in BLOCKS.items():
        path = os.path.join(root, relative)
        old, new = texts.get(path, (None, None))
        if old is None:
            with open(path) as f:
                old = new = f.read()
        lines = new.split("\n")
        try:
            start = lines.index(START.format(name))
            end = lines.index(END, start)
        except ValueError:
            raise TablesError(
                f"{path} has no block {START.format(name)} ... {END}: put the markers back around it"
            ) from None
        lines[start + 1 : end] = make(root, lines[start + 1 : end])
        texts[path] = (old, "\n".join(lines))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs")
    mode.add_argument("--take", metavar="RESULTS", help="first copy the throughput files of a GPU check's results")
    parser.add_argument("--root", default=ROOT, help="the checkout (default: this script's)")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    try:
        if args.take:
            copied, removed = take(args.take, root)
            for name in copied:
                print(f"took {name} into {os.path.join(root, 'benchmarks', 'results')}")
            for name in removed:
                print(f"removed benchmarks/results/{name}: {args.take} has none, and two checks' files never mix")
        texts = regenerate(root)
    except TablesError as error:
        print(f"gpu_tables: {error}", file=sys.stderr)
        return 2
    stale = [path for path, (old, new) in texts.items() if old != new]
    if args.check:
        for path in stale:
            print(f"{path}: its generated blocks differ from benchmarks/results; run python benchmarks/gpu_tables.py")
        return 1 if stale else 0
    for path in stale:
        with open(path + ".tmp", "w") as f:
            f.write(texts[path][1])
        os.replace(path + ".tmp", path)
        print(f"rewrote {path}")
    if not stale:
        print("every generated block already matches benchmarks/results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
