"""Training throughput, in one process and one run: a plain PyTorch loop, sbvae's step, and sbvae-train.

    python benchmarks/throughput.py --device cpu|cuda [--quick] [--json PATH] [--models sbd,deconv,factorvae-sbd]
                                    [--precision 32-true|bf16-mixed] [--channels-last auto|true|false] [--replicas 1,15]
                                    [--trainer-only]

Rows, for each model (the paper's configs: SBD and DeConv VAE at batch 16, FactorVAE-SBD at batch 32):
  naive    the loop a researcher writes in 60 lines: the same nets, images pre-rendered on the device,
           randn_like noise, Adam; eager.
  step     sbvae's training step alone (``sbvae.engine``: a CUDA graph on CUDA, eager on CPU), images
           rendered inside the step.
  trainer  ``sbvae-train fit`` on the config, with its logging, validation, checkpoints and pictures:
           steps completed over wall time after warm-up.
  replicas R seeds in one process (``--replicas``), images/s summed over the replicas: a ``step`` row (the
           replica set's engine step, timed in the same alternating rounds as the single step, so "x step"
           compares it with R single runs in sequence) and a ``trainer`` row; on CUDA each trainer row also
           records its peak GPU memory, and two or more replica counts give the largest R that fits.
It also times sbvae-train's loop around a no-op step (``trainer_loop_host_us_per_step``): the host time per
step Lightning and sbvae's callbacks take, which caps a trainer row at 1 / that many steps per second.
``--trainer-only`` measures just the trainer rows of ``--replicas`` (the probe of the largest count that fits).
The JSON is rewritten after every row, and a failed row (out of memory, say) is recorded under ``errors``
while the others go on; the exit status is 1 if any failed.
The naive and step rows are timed in alternating rounds (the median of 5), so load from other work on the
machine slows both alike. The ratio column divides by the naive row of the same model and run.  ``--quick``: 32 px images and
few steps, so the whole run takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time

import lightning
import torch
import torch.nn.functional as F
import yaml

from sbvae.cli.train import build_cli
from sbvae.engine import Engine, draw_ahead_for
from sbvae.module import wants_channels_last
from sbvae.replicas import ReplicaSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "sbd": "sprites/vae-sbd.yaml",
    "deconv": "sprites/vae-deconv.yaml",
    "factorvae-sbd": "sprites/factorvae-sbd.yaml",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn``."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def interleaved(fns: dict, steps: int, warmup: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds after ``warmup`` calls each,
    so that a machine whose load changes during the run slows every row alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, steps, device))
    return {name: statistics.median(t) for name, t in times.items()}


def build(model_name: str, args, device: torch.device):
    """(model, datamodule) from the model's paper config, as sbvae-train builds them."""
    overrides = ["--data.image_size", str(args.image_size), "--trainer.accelerator", "cpu"]
    cli = build_cli(["--config", os.path.join(ROOT, "configs", CONFIGS[model_name]), *overrides], run=False)
    return cli.model.to(device), cli.datamodule


# -- naive: what a user writes -------------------------------------------------------------------
def naive_step_fn(model, dm, device, autocast):
    enc, dec = model.encoder, model.decoder
    disc = getattr(model, "discriminator", None)
    pool = dm.data.render(dm.data.sample_factors(2048, torch.Generator().manual_seed(0)).to(device))
    batch = dm.hparams.batch_size
    vae_params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(vae_params, lr=model.hparams.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-5, betas=(0.5, 0.9)) if disc is not None else None

    def step():
        x = pool[torch.randint(len(pool), (batch,), device=device)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            mean, logvar = enc(x)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            logits = dec(z)
        nll = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum") / batch
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum() / batch
        loss = nll + model.hparams.beta * kl
        if disc is not None:  # FactorVAE: the TC term trains the VAE, the discriminator loss the discriminator
            for p in disc.parameters():
                p.requires_grad_(False)
            tc = (disc(z)[:, 0] - disc(z)[:, 1]).mean()
            for p in disc.parameters():
                p.requires_grad_(True)
            zd = z.detach()
            zp = torch.stack([c[torch.randperm(batch, device=device)] for c in zd.T], 1)
            labels = torch.cat([torch.zeros(batch), torch.ones(batch)]).long().to(device)
            d_loss = F.cross_entropy(disc(torch.cat([zd, zp])), labels)
            loss = loss + model.hparams.gamma * tc + d_loss
        opt.zero_grad(set_to_none=True)
        if opt_d is not None:
            opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if opt_d is not None:
            opt_d.step()

    return step


# -- step: sbvae's engine alone --------------------------------------------------------------------
def engine_step_fn(model, dm, device, autocast, channels_last):
    layout = torch.contiguous_format
    if wants_channels_last(channels_last, device):  # as the module resolves it in sbvae-train, images too
        model.to(memory_format=torch.channels_last)
        layout = torch.channels_last
    opts = model.configure_optimizers()
    opts = list(opts) if isinstance(opts, tuple) else [opts]
    mode = "graph" if device.type == "cuda" else "eager"
    draw = lambda s: dm.training_batch(0, 0, s, device).contiguous(memory_format=layout)
    engine = Engine(
        model,
        opts,
        draw,
        seed=0,
        rank=0,
        mode=mode,
        start_step=0,
        device=device,
        autocast_dtype=torch.bfloat16 if autocast else None,
        draw_ahead=draw_ahead_for(device, mode, 0),
    )
    return engine.step


def replica_step_fn(model, dm, device, autocast, channels_last, replicas: int):
    """The engine step of ``replicas`` seeds of ``model``'s configuration stacked, as ``--replicas`` trains them."""
    if channels_last is not None:
        model.hparams.channels_last = channels_last
    rs = ReplicaSet(model, list(range(replicas))).to(device)
    rs.lay_out_weights()  # as its on_train_start does in sbvae-train
    opts = rs.configure_optimizers()
    opts = list(opts) if isinstance(opts, tuple) else [opts]
    seeds = torch.arange(replicas, device=device)
    mode = "graph" if device.type == "cuda" else "eager"
    engine = Engine(
        rs,
        opts,
        lambda s: dm.training_batch(seeds, 0, s, device),
        seed=seeds,
        rank=0,
        mode=mode,
        start_step=0,
        device=device,
        autocast_dtype=torch.bfloat16 if autocast else None,
        max_loss=rs.model_hparams["max_loss"],
        replicas=replicas,
        draw_ahead=draw_ahead_for(device, mode, seeds),
    )
    return engine.step


# -- trainer: the real loop ------------------------------------------------------------------------
class WindowClosed(Exception):
    """Raised at a trainer row's last timed step: the row has its figures."""


class StepClock(lightning.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup or trainer.global_step >= trainer.max_steps:
            sync(module.device)
        if trainer.global_step == self.warmup:
            self.start, self.first = time.perf_counter(), trainer.global_step
        self.end, self.steps = time.perf_counter(), trainer.global_step
        if trainer.global_step >= trainer.max_steps:
            # The end of fit is no step, and for a thousand replicas it writes a thousand checkpoints and
            # traversals: minutes that a GPU window cannot spare. The row stops here.
            raise WindowClosed


def trainer_images_per_s(model_name: str, args, device: torch.device, replicas: int = 1) -> tuple[float, float | None]:
    """(images/s, peak GPU memory reserved in GiB, or None on CPU) of sbvae-train on the model's config."""
    clock = StepClock(args.trainer_warmup)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    steps = args.trainer_warmup + args.trainer_steps
    with tempfile.TemporaryDirectory() as out:
        extra = ["--replicas", str(replicas)] if replicas > 1 else []
        cli = build_cli(
            [
                "--config",
                os.path.join(ROOT, "configs", CONFIGS[model_name]),
                *extra,
                "--data.image_size",
                str(args.image_size),
                "--trainer.max_steps",
                str(steps),
                "--trainer.accelerator",
                "gpu" if device.type == "cuda" else "cpu",
                "--trainer.precision",
                args.precision,
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger.init_args.save_dir",
                out,
                "--data.steps_per_epoch",
                str(args.steps_per_epoch),
                "--data.val_size",
                str(args.val_size),
                "--images.every_n_steps",
                str(args.steps_per_epoch),
                "--model.init_args.channels_last",
                {None: "null", True: "true", False: "false"}[args.channels_last],
            ],
            run=False,
        )
        cli.trainer.callbacks.append(clock)
        cli.before_fit()  # what sbvae-train fit does first: --replicas swaps in the replica set here
        if replicas > 1 and type(cli.model).__name__ != "ReplicaSet":
            raise RuntimeError("the replica row did not train a replica set")
        try:
            cli.trainer.fit(cli.model, cli.datamodule)
        except WindowClosed:
            pass
        if clock.steps < steps or clock.start is None:
            raise RuntimeError(f"sbvae-train stopped at step {clock.steps} of {steps}: no timed window")
    batch = cli.datamodule.hparams.batch_size * replicas
    # Reserved, not allocated: a CUDA graph's private pool is reserved for as long as the graph lives.
    memory = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    return batch * (clock.steps - clock.first) / (clock.end - clock.start), memory


def loop_host_seconds(model_name: str, args, device: torch.device, steps: int = 1000) -> float:
    """Host seconds per step of sbvae-train's loop around the step: the trainer with the engine's step
    replaced by a no-op. A trainer row can run at most 1 / this many steps per second."""
    terms = {}

    def no_step(engine):
        engine.step_counter.add_(1)
        if not terms:
            terms.update({name: torch.zeros((), device=device) for name in ("loss", "elbo", "nll", "kl", "tc", "disc")})
        engine.terms = terms
        return terms

    real, Engine.step = Engine.step, no_step
    try:
        # No validation, pictures or checkpoints inside the timed steps: the loop's cost on every step.
        lean = argparse.Namespace(
            **{**vars(args), "trainer_warmup": 50, "trainer_steps": steps, "steps_per_epoch": 10**9}
        )
        rate, _ = trainer_images_per_s(model_name, lean, device)
    finally:
        Engine.step = real
    with open(os.path.join(ROOT, "configs", CONFIGS[model_name])) as f:
        batch = yaml.safe_load(f)["data"]["batch_size"]
    return batch / rate


def largest_replicas(rows: list[dict], model: str, memory_gib: float) -> int | None:
    """The most replicas of ``model`` that fit in ``memory_gib``, by a line through the measured peaks: of
    replica sets when two were measured (a single run has no replica program), else through all."""
    points = sorted(
        (r["replicas"], r["peak_memory_gib"])
        for r in rows
        if r["model"] == model and r["path"] == "trainer" and r.get("peak_memory_gib")
    )
    if sum(r > 1 for r, _ in points) >= 2:
        points = [(r, m) for r, m in points if r > 1]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    (r0, m0), (r1, m1) = points[0], points[-1]
    per_replica = (m1 - m0) / (r1 - r0)
    return int(r0 + (memory_gib - m0) / per_replica) if per_replica > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--quick", action="store_true", help="32 px images and few steps (a few minutes on 2 CPU cores)"
    )
    parser.add_argument(
        "--json",
        help="write the results here (default: benchmarks/results/throughput-<device>[-bf16][-quick][-<size>px].json)",
    )
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "true", "false"],
        help="memory format of sbvae's rows (auto: as sbvae-train picks it, channels-last on CPU only)",
    )
    parser.add_argument("--replicas", default="", help="comma-separated replica counts for replica rows, e.g. 15,32")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadier on a shared machine")
    parser.add_argument("--image-size", type=int, help="image size (default: 32 with --quick, else the paper's 64)")
    parser.add_argument(
        "--trainer-steps", type=int, help="timed steps of each trainer row (default: 10 with --quick, else 2000)"
    )
    parser.add_argument(
        "--trainer-warmup", type=int, help="untimed first steps of each trainer row (default: 10 with --quick, else 20)"
    )
    parser.add_argument(
        "--trainer-only",
        action="store_true",
        help="only the sbvae-train rows (no plain loop or step rows): a probe of the largest replica count",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.channels_last = {"auto": None, "true": True, "false": False}[args.channels_last]
    args.image_size = args.image_size or (32 if args.quick else 64)  # the DeConv decoder needs a multiple of 32
    # Timed steps per round, warm-up steps, rounds: a GPU step takes milliseconds, and a GPU window is short.
    args.steps, args.warmup, args.rounds = (
        (5, 2, 5) if args.quick else (50, 20, 3) if device.type == "cuda" else (200, 20, 5)
    )
    # The first steps of a fit allocate, tune kernels and capture the step's CUDA graph (after 3 eager steps).
    args.trainer_warmup = args.trainer_warmup or (10 if args.quick else 20)
    args.trainer_steps = args.trainer_steps or (10 if args.quick else 2000)
    args.steps_per_epoch = 1000 if args.quick else 10000  # the paper configs validate every 10,000 steps
    args.val_size = 64 if args.quick else 4096
    replica_counts = [int(v) for v in args.replicas.split(",") if v]
    out = args.json or default_json(device.type, args.precision, args.quick, args.image_size)
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "precision": args.precision,
        "channels_last": wants_channels_last(args.channels_last, device),
        "image_size": args.image_size,
        "quick": args.quick,
        "timing": {
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "trainer_steps": args.trainer_steps,
        },
        "results": [],
        "errors": [],
    }

    def save() -> None:
        """Rewritten after every row, so a run stopped by a timeout keeps the rows it measured."""
        with open(out + ".tmp", "w") as f:
            json.dump(info, f, indent=2)
        os.replace(out + ".tmp", out)

    def attempt(what: str, measure) -> bool:
        """Run one measurement; a failure (out of memory, say) is recorded and the next one goes on."""
        try:
            measure()
            return True
        except Exception as error:  # noqa: BLE001 - one failed row must not lose the others
            info["errors"].append({"row": what, "error": f"{type(error).__name__}: {str(error).strip()[:500]}"})
            print(f"{what}: {type(error).__name__}: {str(error).strip()[:200]}")
            return False
        finally:
            save()
            free(device)

    for name in args.models.split(","):
        if not args.trainer_only:
            attempt(
                f"{name} naive and step rows", lambda: step_rows(name, args, device, replica_counts, info["results"])
            )
        naive = next((r["images_per_s"] for r in info["results"] if r["model"] == name and r["path"] == "naive"), None)
        for r in (replica_counts or [1]) if args.trainer_only else [1, *replica_counts]:
            attempt(
                f"{name} trainer, {r} replica(s)",
                lambda r=r: info["results"].append(trainer_row(name, args, device, r, naive)),
            )
    print_rows(info["results"])
    if not args.trainer_only:
        attempt(
            "host time of the loop",
            lambda: info.update(trainer_loop_host_us_per_step=loop_host_seconds("sbd", args, device) * 1e6),
        )
        if "trainer_loop_host_us_per_step" in info:
            host = info["trainer_loop_host_us_per_step"] / 1e6
            print(
                f"sbvae-train's loop around a no-op step (sbd config): {host * 1e6:.0f} us of host time per step, "
                f"so at most {1 / host:.0f} steps/s"
            )
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        info["gpu_memory_gib"] = total
        info["largest_replicas_that_fit"] = {
            m: largest_replicas(info["results"], m, total) for m in args.models.split(",")
        }
        for m, n in info["largest_replicas_that_fit"].items():
            if n:
                print(f"{m}: about {n} replicas fit in this GPU's {total:.0f} GiB (a line through the measured peaks)")
    save()
    print(f"wrote {out}")
    if info["errors"]:
        raise SystemExit(f"{len(info['errors'])} measurement(s) failed: see 'errors' in {out}")


def default_json(device: str, precision: str, quick: bool, image_size: int) -> str:
    """benchmarks/results/throughput-<device>[-bf16][-quick][-<size>px].json: a bf16 run never overwrites the
    fp32 file of the same device, nor an odd image size the usual one."""
    bf16 = "-bf16" if precision == "bf16-mixed" else ""
    size = f"-{image_size}px" if image_size != (32 if quick else 64) else ""
    name = f"throughput-{device}{bf16}{'-quick' if quick else ''}{size}.json"
    return os.path.join(ROOT, "benchmarks", "results", name)


def free(device: torch.device) -> None:
    """Give back what the last measurement held (its engines' graphs and their pools) before the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_rows(name: str, args, device: torch.device, replica_counts: list[int], rows: list[dict]) -> None:
    """The naive loop, sbvae's step and each replica count's step, timed in alternating rounds."""
    autocast = args.precision == "bf16-mixed"
    torch.manual_seed(0)
    model, dm = build(name, args, device)
    batch = dm.hparams.batch_size
    naive_fn = naive_step_fn(model, dm, device, autocast)
    torch.manual_seed(0)
    model, dm = build(name, args, device)
    fns = {"naive": naive_fn, "step": engine_step_fn(model, dm, device, autocast, args.channels_last)}
    for r in replica_counts:
        torch.manual_seed(0)
        model, dm = build(name, args, device)
        fns[r] = replica_step_fn(model, dm, device, autocast, args.channels_last, r)
    # warm-up covers the engine's graph capture (after its 3 eager steps) on CUDA
    seconds = interleaved(fns, args.steps, args.warmup + 3, args.rounds, device)
    naive, step = batch / seconds["naive"], batch / seconds["step"]
    common = {"model": name, "batch": batch, "naive_images_per_s": naive}
    rows.append({**common, "replicas": 1, "path": "naive", "images_per_s": naive})
    rows.append({**common, "replicas": 1, "path": "step", "images_per_s": step})
    for r in replica_counts:
        rows.append(
            {
                **common,
                "replicas": r,
                "path": "step",
                "images_per_s": r * batch / seconds[r],
                "single_step_images_per_s": step,
            }
        )


def trainer_row(name: str, args, device: torch.device, replicas: int, naive: float | None) -> dict:
    rate, memory = trainer_images_per_s(name, args, device, replicas)
    with open(os.path.join(ROOT, "configs", CONFIGS[name])) as f:
        batch = yaml.safe_load(f)["data"]["batch_size"]
    return {
        "model": name,
        "batch": batch,
        "replicas": replicas,
        "path": "trainer",
        "images_per_s": rate,
        "naive_images_per_s": naive,
        "peak_memory_gib": memory,
    }


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'model':<14} {'batch':>5} {'replicas':>8} {'path':<8} {'images/s':>10} {'x naive':>8} {'x step':>7} {'GiB':>6}"
    )
    for r in rows:
        memory = f"{r['peak_memory_gib']:>6.2f}" if r.get("peak_memory_gib") else f"{'-':>6}"
        single = (
            f"{r['images_per_s'] / r['single_step_images_per_s']:>7.2f}"
            if "single_step_images_per_s" in r
            else f"{'-':>7}"
        )
        ratio = f"{r['images_per_s'] / r['naive_images_per_s']:>8.2f}" if r.get("naive_images_per_s") else f"{'-':>8}"
        print(
            f"{r['model']:<14} {r['batch']:>5} {r['replicas']:>8} {r['path']:<8} {r['images_per_s']:>10.1f} "
            f"{ratio} {single} {memory}"
        )


if __name__ == "__main__":
    main()
