"""sbvae-report: a sweep's tables and figures, beside the paper's numbers.

    sbvae-report runs/sweeps/smoke [--out DIR] [--device cpu] [--no-tensorboard] [--targets FILE]

Reads every run's status.json and sbvae-eval JSON and writes OUT/report.md, OUT/summary.json and PNG
figures (default OUT: DIR/report): mean ± std over seeds per group beside the paper's row, with the
number of seeds, of diverged runs, the steps and the device; MIG histograms with the best and worst
seed's traversals, rate-distortion over beta, latent geometry of two-factor datasets and labelled
traversals.  The figures also go to TensorBoard: per run in the run's folder, the others in OUT/tensorboard.
"""

from __future__ import annotations

import argparse
import os
import sys

from sbvae.errors import SBVAEError

PROG = "sbvae-report"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", help="the --out folder of sbvae-sweep run (or any folder of sbvae-train runs)")
    parser.add_argument("--out", help="where to write report.md, summary.json and the figures (default: DIR/report)")
    parser.add_argument(
        "--device", default="cpu", help="device for the models behind traversals and geometry (cpu, cuda, auto)"
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="do not add the figures to TensorBoard")
    parser.add_argument("--targets", help="read the paper's numbers from this targets.yaml instead of the sweep's copy")
    parser.add_argument(
        "--geometry-points", type=int, default=16, help="grid points per factor in latent-geometry plots"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        if args.geometry_points < 2:
            raise SBVAEError(f"--geometry-points must be at least 2, got {args.geometry_points}.")
        from sbvae.cli.evaluate import resolve_device
        from sbvae.report.build import build_report

        device = str(resolve_device(args.device))

        report = build_report(args.dir, args.out, device, not args.no_tensorboard, args.targets, args.geometry_points)
    except SBVAEError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        sys.exit(2)
    scored = sum(len(r.scored) for r in report.rows)
    print(
        f"wrote {os.path.join(report.out, 'report.md')}, summary.json and {len(report.pictures)} figures "
        f"({scored} scored runs in {len(report.rows)} rows)"
    )


if __name__ == "__main__":
    main()
