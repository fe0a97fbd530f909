"""Mutation testing of the modules whose bugs would be silent (tests/MUTATION.md): mutmut, one group at a time.

    python tests/mutation.py                 # every group of [tool.sbvae-mutation] in pyproject.toml
    python tests/mutation.py metrics nets    # some groups
    python tests/mutation.py --report        # only print the scores of the last runs
    python tests/mutation.py --show objectives   # and the diff of every survivor not listed as equivalent
    python tests/mutation.py --rerun metrics     # today's code and tests: the last run's survivors and changed functions
    python tests/mutation.py metrics --module sbvae/metrics/dci.py   # a fresh run of one module of a group

Not a test and not run in CI: the yardstick of the suite, rerun when the mutated modules change.

mutmut names a mutant after its file's path and activates it by the function's ``__module__``, but
``datasets/`` and ``metrics/`` are imported as ``sbvae.datasets`` / ``sbvae.metrics``.  So each group
runs in a copy laid out as installed (``.mutation/<group>/sbvae/{datasets,metrics}``) whose
pyproject.toml gets the group's ``only_mutate`` and test files; the test files are the few that cover
the group, so a mutant runs against those and not the whole suite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
EQUIVALENT_LIST = ROOT / "tests" / "MUTATION.md"
LAYOUT = {
    "sbvae": "sbvae",
    "datasets": "sbvae/datasets",
    "metrics": "sbvae/metrics",
    "tests": "tests",
    "configs": "configs",
}
# mutmut's exit codes; a timeout or a crash under a mutant is a detected mutant too.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


def load_config() -> tuple[dict, dict]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project["tool"]["mutmut"], project["tool"]["sbvae-mutation"]


def toml_value(value) -> str:
    return json.dumps(value)  # lists of strings and booleans: JSON and TOML agree


def write_config(where: Path, mutmut: dict, spec: dict) -> None:
    """The project's pyproject.toml with the group's own [tool.mutmut] in place of the shared one."""
    text = (ROOT / "pyproject.toml").read_text()
    text = text[: text.index("[tool.mutmut]")]
    settings = {**mutmut, "only_mutate": spec["mutate"], "pytest_add_cli_args_test_selection": spec["tests"]}
    text += "[tool.mutmut]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
    (where / "pyproject.toml").write_text(text)


def stage(group: str, mutmut: dict, spec: dict) -> Path:
    """A fresh copy of the project in the installed layout, configured for one group."""
    where = WORK / group
    shutil.rmtree(where, ignore_errors=True)
    for source, target in LAYOUT.items():
        shutil.copytree(ROOT / source, where / target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    write_config(where, mutmut, spec)
    return where


def refresh(group: str, mutmut: dict, spec: dict) -> None:
    """Today's code, tests, configs and test list into a group's copy (and mutmut's), keeping its results.

    mutmut keeps the result of every mutant whose function is unchanged (it hashes each function) and
    forgets those of changed functions; its map from tests to functions is rebuilt, so that a test that
    now reaches a function runs against its mutants.
    """
    for source, target in LAYOUT.items():
        shutil.copytree(
            ROOT / source,
            WORK / group / target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
        )
    for source in ("tests", "configs"):
        shutil.copytree(
            ROOT / source,
            WORK / group / "mutants" / source,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
        )
    for where in (WORK / group, WORK / group / "mutants"):
        write_config(where, mutmut, spec)
    # mutmut regenerates a file's mutants only when the source is newer than them; copies keep old times.
    for source in (WORK / group / "sbvae").rglob("*.py"):
        source.touch()
    (WORK / group / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


def listed_mutants() -> dict[str, str]:
    """Mutant name -> reason, from the table rows of tests/MUTATION.md.

    A reason starting with "device" marks a mutant that changes only where a tensor lives: the same numbers
    on a CPU, so only the gpu-marked tests can kill it; any other reason marks an equivalent mutant.
    """
    found = {}
    for line in EQUIVALENT_LIST.read_text().splitlines() if EQUIVALENT_LIST.exists() else []:
        m = re.match(r"\|\s*`([\w.ǁ]+__mutmut_\d+)`\s*\|\s*(.*?)\s*\|\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def results(group: str) -> dict[str, tuple[str, str]]:
    """Mutant name -> (module file, status) of a group's last run."""
    sys.path.insert(0, str(WORK / group))
    from mutmut.stats import status_by_exit_code  # noqa: E402  (mutmut is a dev tool, imported only here)

    out = {}
    for meta in sorted((WORK / group / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(WORK / group / "mutants"))[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = (module, status_by_exit_code[code])
    return out


def report(groups: list[str], show: bool) -> bool:
    """Per-module counts; the score is killed / (mutants - equivalent - device-only), the goal 90%."""
    listed = listed_mutants()
    ok = True
    print(
        f"{'module':34} {'mutants':>7} {'killed':>6} {'equiv':>5} {'device':>6} {'alive':>5} {'score':>6} {'w/ device':>9}"
    )
    for group in groups:
        by_module: dict[str, Counter] = {}
        alive, stale = [], []
        for name, (module, status) in sorted(results(group).items()):
            count = by_module.setdefault(module, Counter())
            count["mutants"] += 1
            if status in DETECTED:
                count["killed"] += 1
                if name in listed:
                    stale.append(name)
            elif name in listed:
                count["device" if listed[name].startswith("device") else "equivalent"] += 1
            else:
                count["alive"] += 1
                alive.append((name, status))
        for module, count in sorted(by_module.items()):
            relevant = count["mutants"] - count["equivalent"] - count["device"]
            score = count["killed"] / relevant if relevant else 1.0
            with_device = count["killed"] / (relevant + count["device"]) if relevant + count["device"] else 1.0
            ok &= score >= 0.9
            print(
                f"{module:34} {count['mutants']:7} {count['killed']:6} {count['equivalent']:5} {count['device']:6} "
                f"{count['alive']:5} {score:6.1%} {with_device:9.1%}"
            )
        # mutmut numbers a function's mutants in order, so an edit to the function renumbers them: a listed
        # name that the tests kill now names another mutant, and the listed one hides under a new number.
        for name in stale:
            print(f"    listed in tests/MUTATION.md but killed (renumbered by an edit? relist it): {name}")
        ok &= not stale
        for name, status in alive:
            print(f"    {status}: {name}")
            if show:
                subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=WORK / group, check=False)
    return ok


def main(argv: list[str] | None = None) -> int:
    mutmut, groups = load_config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"of {', '.join(groups)} (default: all)")
    parser.add_argument("--report", action="store_true", help="print the last runs' scores, run nothing")
    parser.add_argument("--show", action="store_true", help="print the diff of every survivor not listed as equivalent")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="bring today's code and tests into the last run's copy, retest its unlisted survivors "
        "and the mutants of changed functions (mutmut keeps the rest)",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="FILE",
        help="mutate only this file of the chosen groups (as listed under [tool.sbvae-mutation]; repeatable), "
        "so that one changed module is measured afresh without the hours of its whole group",
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (mutmut --max-children)")
    args = parser.parse_args(argv)
    chosen = args.groups or list(groups)
    unknown = set(chosen) - set(groups)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; the groups are {', '.join(groups)}")
    if args.module:
        if args.rerun or args.report:
            parser.error("--module starts a fresh run of those files; leave out --rerun and --report")
        listed = {f for group in chosen for f in groups[group]["mutate"]}
        if set(args.module) - listed:
            parser.error(
                f"{sorted(set(args.module) - listed)} not mutated by {', '.join(chosen)}; its files: {sorted(listed)}"
            )
        groups = {g: {**spec, "mutate": [f for f in spec["mutate"] if f in args.module]} for g, spec in groups.items()}
        chosen = [g for g in chosen if groups[g]["mutate"]]
    if not args.report:
        for group in chosen:
            if args.rerun:
                listed = listed_mutants()
                survivors = [
                    n for n, (_, status) in results(group).items() if status not in DETECTED and n not in listed
                ]
                refresh(group, mutmut, groups[group])
                # the survivors against today's tests, then whatever a changed function left unchecked
                runs = [survivors, []] if survivors else [[]]
                where = WORK / group
            else:
                runs, where = [[]], stage(group, mutmut, groups[group])
            for names in runs:
                print(
                    f"== {group}: mutmut run in {where}" + (f" ({len(names)} survivors)" if names else ""), flush=True
                )
                done = subprocess.run(
                    [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs), *names],
                    cwd=where,
                    stdout=subprocess.DEVNULL,
                )
                if done.returncode:
                    print(
                        f"mutmut failed on {group} (exit {done.returncode}); rerun it in {where} to see why",
                        file=sys.stderr,
                    )
                    return done.returncode
    return 0 if report(chosen, args.show) else 1


if __name__ == "__main__":
    sys.exit(main())
