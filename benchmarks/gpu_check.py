"""The GPU check: one prepared command that turns a short, rare window on a GPU into every owed figure.

    python3 benchmarks/gpu_check.py RESULTS [--wheels benchmarks/wheels] [--budget 470]
    python3 benchmarks/gpu_check.py RESULTS --rehearse      # every stage on this CPU at tiny sizes, < 5 min
    python3 benchmarks/gpu_check.py RESULTS --plan          # print the stages' commands, run nothing

Before the window: ``bash benchmarks/download_wheels.sh`` puts sbvae's wheel and the pure-Python packages
the GPU machine lacks (jsonargparse and its two extras) in benchmarks/wheels; carry that folder.

Stages, in order; each writes its files as it finishes, so a timeout keeps what came before:
  install         the wheels into a fresh folder (no network), put first on PYTHONPATH, then the checkout's
                  own modules over sbvae's (a stale wheel is listed, never tested); versions and the GPU
  pytest          pytest -m gpu
  throughput      benchmarks/throughput.py: fp32 at batch 16 (the plain loop, sbvae's step and the real
                  sbvae-train loop, replicas at 15 and 32 with peak memory); bf16-mixed; then the largest
                  replica count the fp32 peaks of reserved memory predict, measured by the trainer alone
  graph-vs-eager  a short sbvae-train run with step_mode graph and with eager from one seed: loss curves
  fig2            if time remains: configs/paper/fig2-vae-mig.yaml at a short protocol (15 seeds per decoder
                  as replicas, elbo and mig) and its report, packed into one file

RESULTS ends with at most 8 files: stages.json, environment.txt, log.txt, throughput-cuda.json,
throughput-cuda-bf16.json, throughput-cuda-largest.json, graph-vs-eager.json, fig2-report.tar.gz.
The script itself needs only the standard library: sbvae is not importable until the install stage.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("install", "pytest", "throughput", "graph-vs-eager", "fig2")
# Seconds each stage may take at most (the budget left cuts it shorter); fig2 takes whatever is left.
LIMITS = {"install": 45, "pytest": 100, "throughput": 210, "graph-vs-eager": 90, "fig2": 10_000}
RESULT_FILES = (
    "stages.json",
    "environment.txt",
    "log.txt",
    "throughput-cuda.json",
    "throughput-cuda-bf16.json",
    "throughput-cuda-largest.json",
    "graph-vs-eager.json",
    "fig2-report.tar.gz",
)
PACKAGES = ("sbvae", "jsonargparse", "docstring_parser", "typeshed_client")


class Check:
    """The state of one run of the check: where things go, the sizes for a GPU or a rehearsal, the clock."""

    def __init__(self, results: str, wheels: str, budget: float, rehearse: bool, plan: bool = False):
        self.results, self.wheels, self.rehearse, self.plan = (
            os.path.abspath(results),
            os.path.abspath(wheels),
            rehearse,
            plan,
        )
        self.work = tempfile.mkdtemp(prefix="sbvae-gpu-check-")
        self.site = os.path.join(self.work, "site")  # the fresh install folder
        self.deadline = time.monotonic() + budget
        self.device = "cpu" if rehearse else "cuda"
        self.record: dict = {"rehearse": rehearse, "budget_s": budget, "stages": {}}

    # -- running commands ---------------------------------------------------------------------------
    def env(self) -> dict:
        env = dict(
            os.environ,
            PYTHONPATH=self.site + os.pathsep + os.environ.get("PYTHONPATH", ""),
            PYTHONDONTWRITEBYTECODE="1",
        )
        if self.rehearse:
            env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], limit: float) -> int:
        """Run ``cmd`` from the work folder (never the checkout, whose sbvae/ is not the installed package),
        appending its output to log.txt; 124 when it ran past ``min(limit, budget left)``."""
        if self.plan:
            print("  $ " + " ".join(cmd))
            return 0
        timeout = max(1.0, min(limit, self.left()))
        with open(os.path.join(self.results, "log.txt"), "a") as log:
            log.write(f"\n$ {' '.join(cmd)}   (timeout {timeout:.0f} s)\n")
            log.flush()
            # Its own process group, so a timeout also ends what it started (a sweep's sbvae-train processes).
            child = subprocess.Popen(
                cmd, cwd=self.work, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                return child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                log.write(f"[timed out after {timeout:.0f} s]\n")
                return 124

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def save(self) -> None:
        if not self.plan:
            with open(os.path.join(self.results, "stages.json"), "w") as f:
                json.dump(self.record, f, indent=2)


# -- the stages ------------------------------------------------------------------------------------------


def install(check: Check) -> dict:
    package = lambda wheel: os.path.basename(wheel).lower().split("-")[0]
    wheels = [w for w in sorted(glob.glob(os.path.join(check.wheels, "*.whl"))) if package(w) in PACKAGES]
    missing = [p for p in PACKAGES if p not in {package(w) for w in wheels}]
    if missing and not check.plan:
        return {
            "ok": False,
            "error": f"no wheel of {', '.join(missing)} in {check.wheels}: run bash benchmarks/download_wheels.sh",
        }
    rc = check.run(
        check.python(
            "-m", "pip", "install", "--no-index", "--no-deps", "--target", check.site, *wheels or ["<wheels>"]
        ),
        LIMITS["install"],
    )
    stale = [] if check.plan or rc != 0 else sync_sources(check.site)
    probe = (
        "import json, os, platform, subprocess, torch, lightning, sbvae, jsonargparse; "
        "gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None; "
        "smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], "
        "capture_output=True, text=True).stdout.strip() if gpu else ''; "
        "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'lightning': lightning.__version__, 'jsonargparse': jsonargparse.__version__, "
        "'sbvae_from': os.path.dirname(sbvae.__file__), 'gpu': gpu, 'nvidia_smi': smi, 'cpus': os.cpu_count()}))"
    )
    out = os.path.join(check.results, "environment.txt")
    if check.plan:
        check.run(check.python("-c", "<versions, GPU and nvidia-smi>"), 30)
        return {"ok": True}
    try:
        found_env = subprocess.run(
            check.python("-c", probe), cwd=check.work, env=check.env(), capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "the import probe ran past 60 s"}
    with open(out, "w") as f:
        f.write(found_env.stdout + found_env.stderr)
    if rc != 0 or found_env.returncode != 0:
        return {
            "ok": False,
            "error": f"pip exited {rc}, the import probe {found_env.returncode} (log.txt, environment.txt)",
        }
    environment = json.loads(found_env.stdout)
    if not environment["sbvae_from"].startswith(check.site):
        return {"ok": False, "error": f"sbvae was imported from {environment['sbvae_from']}, not the fresh install"}
    return {"ok": True, "stale_wheel_files": stale, **environment}


def source_files() -> dict[str, str]:
    """Each module the sbvae wheel installs (its path under the install folder) and its file in the checkout,
    by pyproject.toml's packages and package-dir."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    folders = setup.get("package-dir", {})
    files = {}
    for package in setup["packages"]:
        # A package's folder: its own package-dir entry, else its parent's folder and its last name.
        parts, rest = package.split("."), []
        while ".".join(parts) not in folders and parts:
            rest.insert(0, parts.pop())
        base = folders[".".join(parts)] if parts else ""
        source = os.path.join(ROOT, base, *rest)
        for name in sorted(os.listdir(source)):
            if name.endswith(".py"):
                files[os.path.join(*package.split("."), name)] = os.path.join(source, name)
    return files


def sync_sources(site: str) -> list[str]:
    """Make the installed sbvae the checkout's, whatever wheel was carried: a wheel built before the last
    change would otherwise test old code on the one GPU window. Returns the files that differed."""
    stale = []
    for installed, source in source_files().items():
        target = os.path.join(site, installed)
        with open(source, "rb") as f:
            new = f.read()
        try:
            with open(target, "rb") as f:
                same = f.read() == new
        except OSError:
            same = False
        if not same:
            stale.append(installed)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(new)
    return stale


def pytest(check: Check) -> dict:
    rc = check.run(
        check.python(
            "-m",
            "pytest",
            os.path.join(ROOT, "tests"),
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            ROOT,
            "--continue-on-collection-errors",  # one module that fails to import must not cost every GPU test
        ),
        LIMITS["pytest"],
    )
    return {
        "ok": rc == 0,
        "returncode": rc,
        "summary": last_line_matching(check, ("passed", "failed", "skipped", "error")),
    }


def throughput(check: Check) -> dict:
    script = os.path.join(ROOT, "benchmarks", "throughput.py")
    # The SBD VAE: the model every owed figure names (10,000 img/s in the loop, 50,000 for 15 replicas).
    sizes = (
        ["--quick", "--models", "sbd", "--trainer-steps", "5", "--threads", "1"]
        if check.rehearse
        else ["--models", "sbd", "--trainer-steps", "300"]
    )
    fp32 = os.path.join(check.results, "throughput-cuda.json")
    replicas = "2" if check.rehearse else "15,32"
    rcs = [
        check.run(
            check.python(script, "--device", check.device, *sizes, "--replicas", replicas, "--json", fp32),
            LIMITS["throughput"] * 0.52,
        )
    ]
    rcs.append(
        check.run(
            check.python(
                script,
                "--device",
                check.device,
                *sizes,
                "--precision",
                "bf16-mixed",
                "--json",
                os.path.join(check.results, "throughput-cuda-bf16.json"),
            ),
            LIMITS["throughput"] * 0.25,
        )
    )
    largest = None
    if os.path.isfile(fp32):
        with open(fp32) as f:
            largest = (json.load(f).get("largest_replicas_that_fit") or {}).get("sbd")
    if check.rehearse or check.plan:
        largest = largest or 3
    # 90% of the predicted count (a line through two peaks of reserved memory is an estimate), measured by the
    # trainer alone over few steps: hundreds of replicas take about a second a step. Five warm-up steps
    # cover the three eager ones, the capture and its check.
    if largest:
        count = str(max(2, int(0.9 * largest)))
        rcs.append(
            check.run(
                check.python(
                    script,
                    "--device",
                    check.device,
                    *sizes[: sizes.index("--trainer-steps")],
                    "--trainer-warmup",
                    "5",
                    "--trainer-steps",
                    "5",
                    "--trainer-only",
                    "--replicas",
                    count,
                    "--json",
                    os.path.join(check.results, "throughput-cuda-largest.json"),
                ),
                LIMITS["throughput"] * 0.24,
            )
        )
    return {"ok": all(rc == 0 for rc in rcs), "returncodes": rcs, "largest_replicas_predicted": largest}


def graph_vs_eager(check: Check) -> dict:
    steps = "20" if check.rehearse else "300"
    graph = "auto" if check.rehearse else "graph"  # a CPU has no CUDA graph: the rehearsal runs auto's eager choice
    folders = {}
    for mode in (graph, "eager"):
        save = os.path.join(check.work, "graph-vs-eager", mode)
        rc = check.run(
            check.python(
                "-m",
                "sbvae.cli.train",
                "fit",
                "--config",
                os.path.join(ROOT, "configs", "quickstart.yaml"),
                "--trainer.accelerator",
                "cpu" if check.rehearse else "cuda",
                "--trainer.max_steps",
                steps,
                "--trainer.log_every_n_steps",
                "1",
                "--trainer.enable_progress_bar",
                "false",
                "--images.every_n_steps",
                "0",
                "--model.init_args.step_mode",
                mode,
                "--seed_everything",
                "0",
                "--trainer.logger.init_args.save_dir",
                save,
                "--trainer.logger.init_args.version",
                "run",
            ),
            LIMITS["graph-vs-eager"] / 2,  # cold imports, CUDA start-up, validations, checkpoints
        )
        if rc != 0:
            return {"ok": False, "error": f"sbvae-train with step_mode {mode} exited {rc} (log.txt)"}
        folders[mode] = os.path.join(save, "quickstart", "run")
    if check.plan:
        return {"ok": True}
    compare = (
        "import json, sys\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "def curve(d):\n"
        "    e = EventAccumulator(d, size_guidance={'scalars': 0}); e.Reload()\n"
        "    return [s.value for s in e.Scalars('train/loss')]\n"
        "def status(d):\n"
        "    return json.load(open(d + '/status.json'))\n"
        "g, e = (curve(d) for d in sys.argv[1:3])\n"
        "rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(g, e)]\n"
        "print(json.dumps({'steps': len(g), 'graph_status': status(sys.argv[1]), 'eager_status': status(sys.argv[2]),\n"
        "  'max_relative_difference': max(rel), 'first_step_above_1e-3': next((i for i, r in enumerate(rel) if r > 1e-3), None),\n"
        "  'final_loss': {'graph': g[-1], 'eager': e[-1]}, 'graph_loss': g[::10], 'eager_loss': e[::10]}, indent=2))\n"
    )
    try:
        out = subprocess.run(
            check.python("-c", compare, folders[graph], folders["eager"]),
            cwd=check.work,
            env=check.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "comparing the loss curves ran past 60 s"}
    if out.returncode != 0:
        return {"ok": False, "error": out.stderr.strip().splitlines()[-1:]}
    with open(os.path.join(check.results, "graph-vs-eager.json"), "w") as f:
        f.write(out.stdout)
    result = json.loads(out.stdout)
    return {
        "ok": True,
        "max_relative_difference": result["max_relative_difference"],
        "graph_step_mode": result["graph_status"].get("step_mode"),
        "graph_fallback": result["graph_status"].get("graph_fallback"),
    }


def fig2(check: Check) -> dict:
    sweep = os.path.join(ROOT, "configs", "paper", "smoke.yaml" if check.rehearse else "fig2-vae-mig.yaml")
    sizes = (
        ["--set", "steps=8", "--set", "data.val_size=32", "--set", "data.steps_per_epoch=8"]
        if check.rehearse
        else [
            "--set",
            "steps=2000",
            "--set",
            "replicas=15",
            "--set",
            "data.steps_per_epoch=1000",
            "--set",
            "data.val_size=1024",
        ]
    )
    out = os.path.join(check.work, "fig2")
    rc = check.run(
        check.python("-m", "sbvae.cli.sweep", "run", sweep, "--out", out, "--set", "metrics=[elbo,mig]", *sizes),
        max(1.0, check.left() - 45),
    )
    report = os.path.join(out, "report")
    rc_report = check.run(
        check.python(
            "-m", "sbvae.cli.report", out, "--no-tensorboard", "--device", "cpu" if check.rehearse else "cuda"
        ),
        max(1.0, check.left() - 5),
    )
    if check.plan:
        return {"ok": True}
    if os.path.isdir(report):
        with tarfile.open(os.path.join(check.results, "fig2-report.tar.gz"), "w:gz") as tar:
            tar.add(report, arcname="fig2-report")
            for name in ("sweep.json", "tasks"):
                if os.path.exists(os.path.join(out, name)):
                    tar.add(os.path.join(out, name), arcname=f"fig2-report/{name}")
    return {
        "ok": rc == 0 and rc_report == 0,
        "sweep_returncode": rc,
        "report_returncode": rc_report,
        "summary": last_line_matching(check, ("wrote ",)),
    }


RUNNERS = {
    "install": install,
    "pytest": pytest,
    "throughput": throughput,
    "graph-vs-eager": graph_vs_eager,
    "fig2": fig2,
}


def figures(results: str) -> list[str]:
    """The throughput files' figures against the goals, as gpu_tables.py writes them into the docs. Printed
    last, so the call's output carries them even when its files do not come back; a rehearsal's CPU files
    are tabled too (gpu_tables.py refuses them only as the docs' source)."""
    import gpu_tables  # beside this script, standard library only

    loaded = {kind: gpu_tables.load(os.path.join(results, name))[0] for kind, name in gpu_tables.FILES.items()}
    found = {kind: data for kind, data in loaded.items() if data is not None}
    try:
        return gpu_tables.gpu_block(found) if found else []
    except Exception as error:  # noqa: BLE001 - the stages' files matter more than this summary
        return [f"(the figures could not be tabled: {type(error).__name__}: {error})"]


def last_line_matching(check: Check, words: tuple[str, ...]) -> str | None:
    try:
        with open(os.path.join(check.results, "log.txt")) as f:
            lines = [line.strip() for line in f if any(w in line for w in words)]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the folder the stages write into (at most 8 files)")
    parser.add_argument(
        "--wheels", default=os.path.join(ROOT, "benchmarks", "wheels"), help="the wheel folder to install from"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=470.0,
        help="seconds for all stages (the GPU window's one command; give the call about a minute more)",
    )
    parser.add_argument(
        "--rehearse", action="store_true", help="every stage on the CPU at tiny sizes (under 5 minutes)"
    )
    parser.add_argument("--plan", action="store_true", help="print each stage's commands and run nothing")
    parser.add_argument("--only", help="comma-separated stages to run (install always runs first)")
    args = parser.parse_args(argv)
    if args.budget <= 0 or math.isnan(args.budget):
        parser.error("--budget must be a positive number of seconds")
    chosen = STAGES if not args.only else ("install", *[s for s in args.only.split(",") if s != "install"])
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGES)}")
    check = Check(args.results, args.wheels, args.budget, args.rehearse, args.plan)
    if not args.plan:
        os.makedirs(check.results, exist_ok=True)
    try:
        for name in chosen:
            if check.left() <= 5 and not args.plan:
                check.record["stages"][name] = {"ok": False, "skipped": "no time left"}
                continue
            if args.plan:
                print(f"{name}:")
            start = time.monotonic()
            try:
                result = RUNNERS[name](check)
            except Exception as error:  # noqa: BLE001 - a broken stage must not cost the stages after it
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
            check.record["stages"][name] = {**result, "seconds": round(time.monotonic() - start, 1)}
            check.save()
            if not args.plan:
                print(
                    f"[{name}] {'ok' if result.get('ok') else 'FAILED'} in {time.monotonic() - start:.0f} s", flush=True
                )
            if name == "install" and not result.get("ok") and not args.plan:
                print(f"install failed: {result.get('error')}; nothing else can run", file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(check.work, ignore_errors=True)
    if not args.plan:
        extra = sorted(set(os.listdir(check.results)) - set(RESULT_FILES))
        if extra:
            print(f"unexpected files in {check.results}: {extra}", file=sys.stderr)
        print("\n".join(["", *figures(check.results)]), flush=True)
    return 0 if all(s.get("ok") for s in check.record["stages"].values()) or args.plan else 1


if __name__ == "__main__":
    sys.exit(main())
