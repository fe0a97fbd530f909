"""Rendering throughput of every dataset: sample factors + render a batch, images per second.

    python benchmarks/bench_render.py [--batch 64] [--size 64] [--seconds 1] [--device cpu cuda]

Training renders one batch (16-64 images) per step on the model's device, so
the number that matters is a batch's latency; this prints images/s of the fastest
batch (robust to a shared, throttled machine) and the best and median ms per batch.
File-based datasets are included when their files are in the data directory.
Writes benchmarks/results/render-<device>.json per device.  Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from sbvae.datasets import DataError, available, load


def bench(name: str, device: torch.device, batch: int, size: int, seconds: float) -> tuple[float, float] | None:
    """(best, median) seconds per batch of sample_factors + render, or None when the dataset's file is absent."""
    try:
        data = load(name, image_size=size)
    except DataError:
        return None  # its file is not here
    sample_gen = torch.Generator().manual_seed(0)
    render_gen = torch.Generator(device=device).manual_seed(0)

    def step():
        data.render(data.sample_factors(batch, sample_gen).to(device), render_gen)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up: atlas, caches, kernels
        step()
    sync()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[0], times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per dataset and device")
    parser.add_argument("--device", nargs="*", default=None, help="devices (default: cpu, and cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(f"batch {args.batch}, {args.size}x{args.size} px\n")
    header = f"{'dataset':<20}" + "".join(f"{d + ' img/s':>14}{'ms best':>9}{'ms median':>11}" for d in devices)
    print(header)
    print("-" * len(header))
    rows = {d: [] for d in devices}
    for name in available():
        cells = []
        for d in devices:
            t = bench(name, torch.device(d), args.batch, args.size, args.seconds)
            cells.append(
                f"{'(no file)':>14}{'':>20}"
                if t is None
                else f"{args.batch / t[0]:>14,.0f}{1000 * t[0]:>9.2f}{1000 * t[1]:>11.2f}"
            )
            if t is not None:
                rows[d].append(
                    {
                        "dataset": name,
                        "images_per_second": args.batch / t[0],
                        "ms_best": 1000 * t[0],
                        "ms_median": 1000 * t[1],
                    }
                )
        print(f"{name:<20}" + "".join(cells))
    os.makedirs(args.out, exist_ok=True)
    for d, measured in rows.items():
        report = {
            "device": d,
            "device_name": torch.cuda.get_device_name()
            if d.startswith("cuda")
            else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "batch": args.batch,
            "image_size": args.size,
            "seconds_per_dataset": args.seconds,
            "rows": measured,
        }
        path = os.path.join(args.out, f"render-{torch.device(d).type}.json")
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
