"""The downstream task's boosted trees fitted serially and in threads, in one run: the same score, the time.

    python benchmarks/bench_parallel_fits.py [--jobs 2] [--num-train 2000]

disentanglement_lib's predictor (GradientBoostingClassifier with its defaults) on codes of 10 dimensions
against dSprites' factor sizes (3, 6, 40, 32, 32), one training size and 5,000 test codes. The factor with 40
classes bounds the gain: it is 40 of the 113 class-trees per boosting stage. Writes
benchmarks/results/parallel-fits-<cpus>cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from sbvae.metrics.downstream import downstream_from_codes

SIZES = (3, 6, 40, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    n = args.num_train + 5000
    factors = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in SIZES], 1)
    codes = torch.randn(n, 10, generator=gen, dtype=torch.float64)
    codes[:, :5] += 0.3 * factors.double() / torch.tensor(SIZES).double()  # a little signal, as a weak model's
    train, test = slice(0, args.num_train), slice(args.num_train, n)
    rows = []
    for jobs in (1, args.jobs):
        start = time.perf_counter()
        r = downstream_from_codes(
            codes[train], factors[train], codes[test], factors[test], predictor="boosted_trees", n_jobs=jobs
        )
        rows.append({"jobs": jobs, "seconds": time.perf_counter() - start, "score": r.score})
        print(f"{jobs} thread(s): {rows[-1]['seconds']:.1f} s, score {r.score:.4f}", flush=True)
    if rows[0]["score"] != rows[1]["score"]:
        raise SystemExit("the threaded fits gave another score: a bug")
    report = {
        "what": f"downstream boosted_trees, {args.num_train} training and 5000 test codes, D=10, factors {SIZES}",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "speedup": rows[0]["seconds"] / rows[1]["seconds"],
        "rows": rows,
    }
    path = os.path.join(args.out, f"parallel-fits-{os.cpu_count()}cpu.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"speed-up {report['speedup']:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
