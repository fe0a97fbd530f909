"""How much the FactorVAE score of one checkpoint moves between evaluation seeds, at a preset.

python benchmarks/factor_vae_spread.py CKPT [--preset quick] [--seeds 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from sbvae.evaluation import score
from sbvae.loading import model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--preset", default="quick", choices=["quick", "paper"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, dm = model_from_checkpoint(args.ckpt, torch.device("cpu"))[:2]
    scores = [
        score(model, dm.data, ["factor_vae"], args.preset, seed)["factor_vae"].score for seed in range(args.seeds)
    ]
    result = {
        "checkpoint": args.ckpt,
        "preset": args.preset,
        "seeds": list(range(args.seeds)),
        "scores": scores,
        "mean": statistics.mean(scores),
        "std": statistics.stdev(scores),
        "min": min(scores),
        "max": max(scores),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
