"""How long MIG and the FactorVAE score take, on CPU and (if present) CUDA.

    python benchmarks/bench_metrics.py                 # cpu (reduced FactorVAE sizes) and cuda (paper sizes)
    python benchmarks/bench_metrics.py --device cuda --chunk-size 4096
    python benchmarks/bench_metrics.py --device cpu --cpu-full   # the paper preset on CPU (~15 min on 2 cores)

Rows:
- ``mig (codes only)``: ``sbvae.metrics.mig`` on 10,000 precomputed codes (D = 10,
  dSprites' factor sizes): discretize + joint histogram + gaps.
- ``mig (end to end)``: ``compute_mig`` at 10,000 points: render + encode + metric.
- ``factor_vae``: ``factor_vae_score`` at the paper preset (batch 64, 10,000 train
  and 5,000 eval votes, 10,000 variance images: 970,000 images). On CPU the default is
  a reduced preset (500 / 250 votes, 2,000 variance images) with the paper time
  extrapolated linearly in images encoded (the cost is render + encode).
- ``irs``, ``unsupervised``, ``downstream (<predictor>)`` (codes only): disentanglement_lib's other metrics on
  10,000 precomputed codes at the paper preset's sizes (the downstream task fits at 10, 100, 1,000 and
  10,000 training codes and tests on 5,000 more); ``udr (codes only)``: 15 models' codes of 1,000 points.
The representation is the paper's encoder (``sbvae.nets.ConvEncoder``, Table 1: 4 x
Conv(k4, s2, 64), FC 256, 10 latents; randomly initialised, means standardised so all
10 dimensions are active: the timing does not depend on the weights) on colored sprites rendered procedurally on the device.
Writes benchmarks/results/metrics-<device>[-codes][-jobs<N>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from sbvae.metrics import (
    compute_mig,
    downstream_from_codes,
    factor_vae_score,
    irs_from_codes,
    mig,
    udr_from_codes,
    unsupervised_from_codes,
)

PAPER_FV = dict(batch_size=64, num_train=10_000, num_eval=5_000, num_variance_estimate=10_000)
REDUCED_FV = dict(batch_size=64, num_train=500, num_eval=250, num_variance_estimate=2_000)
DSPRITES_SIZES = (3, 6, 40, 32, 32)


def fv_images(p: dict) -> int:
    return p["num_variance_estimate"] + (p["num_train"] + p["num_eval"]) * p["batch_size"]


class BlobData:
    """Stand-in 64x64 RGB data (used only if sbvae.datasets has no colored sprites): a coloured blob per factor row."""

    factor_names = ("shape", "scale", "orientation", "posX", "posY")
    factor_sizes = DSPRITES_SIZES
    has_ground_truth = True

    def sample_factors(self, n, generator=None):
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        return (u * torch.tensor(self.factor_sizes, dtype=torch.float64)).long()

    def render(self, factors, generator=None):
        f = factors.float() / (torch.tensor(self.factor_sizes, device=factors.device) - 1).clamp_min(1)
        grid = (torch.arange(64, device=factors.device) + 0.5) / 64
        dx = grid[None, None, :] - (0.25 + 0.5 * f[:, 3, None, None])
        dy = grid[None, :, None] - (0.25 + 0.5 * f[:, 4, None, None])
        blob = torch.exp(-(dx**2 + dy**2) / (0.005 + 0.01 * f[:, 1, None, None]))
        colour = torch.stack([f[:, 0], f[:, 2], 1 - f[:, 0]], dim=1)[:, :, None, None]
        return blob[:, None] * colour


def make_data():
    try:
        from sbvae.datasets import load  # type: ignore[attr-defined]

        return load("colored-sprites"), "sbvae.datasets.load('colored-sprites')"
    except Exception:
        pass
    try:
        from sbvae.datasets.sprites import ColoredSprites

        return ColoredSprites(source="procedural"), "ColoredSprites(source='procedural')"
    except Exception:
        return BlobData(), "stand-in blob renderer (no colored sprites in sbvae.datasets)"


def make_encoder(channels: int, device: torch.device):
    try:
        from sbvae.nets import ConvEncoder

        enc, name = ConvEncoder(in_channels=channels, image_size=64, latent_dim=10), "sbvae.nets.ConvEncoder (Table 1)"
    except ImportError:
        layers, prev = [], channels
        for _ in range(4):
            layers += [torch.nn.Conv2d(prev, 64, 4, 2, 1), torch.nn.ReLU()]
            prev = 64
        net = torch.nn.Sequential(
            *layers, torch.nn.Flatten(), torch.nn.Linear(64 * 16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 20)
        )
        enc, name = (lambda x: net(x).chunk(2, 1)), "stand-in conv net (sbvae.nets.ConvEncoder missing)"
        enc.net = net
    module = enc if isinstance(enc, torch.nn.Module) else enc.net
    module.to(device).eval()
    # A freshly initialised encoder's means are tiny (std << 0.05, every dimension "collapsed"),
    # which would let the FactorVAE score stop early: standardise them on a calibration batch.
    calib = torch.rand(256, channels, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        mean = enc(calib)[0]
    shift, scale = mean.mean(0), mean.std(0).clamp_min(1e-12)

    def represent(x):
        return (enc(x)[0] - shift) / scale

    return represent, name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def codes_only_rows(codes: torch.Tensor, factors: torch.Tensor, gen: torch.Generator, jobs: int = 1) -> list[dict]:
    """disentanglement_lib's other metrics on precomputed codes, at the paper preset's sizes (the downstream
    task's per-factor fits in ``jobs`` threads)."""
    rows = []
    for name, fn in (
        ("irs", lambda: irs_from_codes(codes, factors)),
        ("unsupervised", lambda: unsupervised_from_codes(codes)),
    ):
        res, sec = timed(fn, codes.device)
        rows.append(
            dict(
                metric=f"{name} (codes only)",
                sizes="N=10000, D=10, dSprites factors",
                images=0,
                seconds=sec,
                score=res.score,
            )
        )
    # The downstream task at its four training sizes, each tested on 5,000 further codes (paper preset).
    test_codes, test_factors = codes[:5_000], factors[:5_000]
    for predictor in ("logistic_regression", "boosted_trees"):
        start = time.perf_counter()
        for n in (10, 100, 1_000, 10_000):
            res = downstream_from_codes(
                codes[:n], factors[:n], test_codes, test_factors, predictor=predictor, n_jobs=jobs
            )
        rows.append(
            dict(
                metric=f"downstream {predictor} (codes only)",
                sizes=f"train 10, 100, 1000, 10000; test 5000; {jobs} thread(s)",
                images=0,
                seconds=time.perf_counter() - start,
                score=res.score,
            )
        )
    # 15 models of one group: a shared signal, each model's dimensions permuted and noised.
    signal = torch.randn(1_000, 10, generator=gen, dtype=torch.float64)
    means = [
        (
            signal[:, torch.randperm(10, generator=gen)]
            + 0.3 * torch.randn(1_000, 10, generator=gen, dtype=torch.float64)
        ).numpy()
        for _ in range(15)
    ]
    kls = [torch.ones(10).numpy() for _ in range(15)]
    res, sec = timed(lambda: udr_from_codes(means, kls), codes.device)
    rows.append(
        dict(metric="udr (codes only)", sizes="15 models, N=1000, D=10, lasso", images=0, seconds=sec, score=res.score)
    )
    return rows


def end_to_end_rows(data, represent, device: torch.device, chunk_size: int, cpu_full: bool) -> list[dict]:
    rows = []
    compute_mig(data, represent, num_points=chunk_size, chunk_size=chunk_size, device=device)  # warm-up
    res, sec = timed(
        lambda: compute_mig(data, represent, num_points=10_000, chunk_size=chunk_size, device=device), device
    )
    rows.append(dict(metric="mig (end to end)", sizes="N=10000", images=10_000, seconds=sec, score=res.score))

    preset = PAPER_FV if (device.type == "cuda" or cpu_full) else REDUCED_FV
    res, sec = timed(lambda: factor_vae_score(data, represent, device=device, chunk_size=chunk_size, **preset), device)
    row = dict(
        metric="factor_vae",
        sizes=", ".join(f"{k}={v}" for k, v in preset.items()),
        images=fv_images(preset),
        seconds=sec,
        score=res.score,
        num_active_dims=res.num_active_dims,
    )
    if preset is not PAPER_FV:
        row["paper_preset_seconds_extrapolated"] = sec * fv_images(PAPER_FV) / fv_images(preset)
    rows.append(row)
    return rows


def bench(device: torch.device, chunk_size: int, cpu_full: bool, codes_only: bool = False, jobs: int = 1) -> dict:
    data, data_name = make_data()
    channels = 3 if not hasattr(data, "channels") else data.channels
    represent, enc_name = make_encoder(channels, device)
    gen = torch.Generator().manual_seed(0)
    factors = torch.stack([torch.randint(0, s, (10_000,), generator=gen) for s in DSPRITES_SIZES], 1).to(device)
    codes = torch.randn(10_000, 10, generator=gen).to(device)
    mig(codes, factors)  # warm-up (kernels, allocator)
    rows = []
    sec = sorted(timed(lambda: mig(codes, factors), device)[1] for _ in range(5))[2]  # median of 5
    rows.append(dict(metric="mig (codes only)", sizes="N=10000, D=10, dSprites factors", images=0, seconds=sec))

    rows += codes_only_rows(codes.cpu(), factors.cpu(), gen, jobs)
    if not codes_only:
        rows += end_to_end_rows(data, represent, device, chunk_size, cpu_full)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return dict(
        device=str(device),
        device_name=name,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        chunk_size=chunk_size,
        jobs=jobs,
        data=data_name,
        encoder=enc_name,
        rows=rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--chunk-size", type=int, default=1024, help="images rendered and encoded per call")
    parser.add_argument("--cpu-full", action="store_true", help="run the FactorVAE paper preset on CPU too")
    parser.add_argument("--codes-only", action="store_true", help="only the rows on precomputed codes (seconds)")
    parser.add_argument("--jobs", type=int, default=1, help="threads for the downstream task's per-factor fits")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available.")
    os.makedirs(args.out, exist_ok=True)
    for device in devices:
        report = bench(device, args.chunk_size, args.cpu_full, args.codes_only, args.jobs)
        print(
            f"\n{report['device']} ({report['device_name']}, {report['threads']} threads, torch {report['torch']}, "
            f"chunk {report['chunk_size']})\n  data: {report['data']}\n  encoder: {report['encoder']}"
        )
        print(f"  {'metric':<20} {'sizes':<60} {'images':>8} {'seconds':>9} {'img/s':>8}  paper preset s")
        for r in report["rows"]:
            rate = f"{r['images'] / r['seconds']:8.0f}" if r["images"] else f"{'-':>8}"
            paper = r.get("paper_preset_seconds_extrapolated")
            paper = f"~{paper:.0f} (extrapolated)" if paper else ("measured" if r["metric"] == "factor_vae" else "")
            print(f"  {r['metric']:<20} {r['sizes']:<60} {r['images']:>8} {r['seconds']:>9.3f} {rate}  {paper}")
        suffix = ("-codes" if args.codes_only else "") + (f"-jobs{args.jobs}" if args.jobs != 1 else "")
        path = os.path.join(args.out, f"metrics-{device.type}{suffix}.json")
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
