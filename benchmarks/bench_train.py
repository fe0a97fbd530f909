"""Training throughput of the paper's models: images per second for one optimisation step.

    python benchmarks/bench_train.py [--device cuda] [--steps 50] [--image-size 64] [--batch-size 16]

Times the whole step a run spends its time on (render the batch on the device, encode, decode,
loss, backward, Adam), for the Spatial Broadcast and the DeConv VAE and the FactorVAE, and writes
benchmarks/results/train-<device>.json.  Not run by the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from sbvae.datasets import load
from sbvae.factorvae import FactorVAE
from sbvae.module import VAE

MODELS = {
    "vae-sbd": lambda size, ch: VAE(decoder="spatial_broadcast", image_size=size, channels=ch),
    "vae-deconv": lambda size, ch: VAE(decoder="deconv", image_size=size, channels=ch),
    "factorvae-sbd": lambda size, ch: FactorVAE(decoder="spatial_broadcast", image_size=size, channels=ch,
                                                encoder_options={"channels": [32, 32, 64, 64]}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(name: str, device: torch.device, args) -> dict:
    data = load("colored-sprites", image_size=args.image_size)
    model = MODELS[name](args.image_size, data.channels).to(device)
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, tuple) else (optimizers,)
    gen = torch.Generator().manual_seed(0)
    render_gen = torch.Generator(device=device).manual_seed(0)
    batch = args.batch_size * (2 if name.startswith("factorvae") else 1)

    def step():
        x = data.render(data.sample_factors(batch, gen).to(device), render_gen)
        if isinstance(model, FactorVAE):
            losses = model.losses(x)
            loss = losses["vae_loss"] + losses["disc_loss"]
        else:
            nll, kl, _, _ = model.per_image_terms(x)
            loss = nll.mean() + kl.mean()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    return {"model": name, "batch_size": batch, "ms_per_step": 1000 * seconds, "images_per_s": batch / seconds,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [time_model(name, device, args) for name in args.models.split(",")]
    print(f"{'model':<16} {'batch':>5} {'ms/step':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['model']:<16} {r['batch_size']:>5} {r['ms_per_step']:>9.1f} {r['images_per_s']:>9.0f}")
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "image_size": args.image_size, "results": rows,
    }
    out = os.path.join(os.path.dirname(__file__), "results", f"train-{device.type}.json")
    with open(out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
