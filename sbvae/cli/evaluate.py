"""sbvae-eval: score checkpoints with disentanglement metrics.

    sbvae-eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --metrics mig,factor_vae --preset paper
    sbvae-eval --ckpt runs/quickstart/version_0        # a run folder: its last.ckpt, or every replica's
    sbvae-eval --ckpt runs/sprites-vae-sbd/version_0 --metrics mig,udr   # a replica run: UDR ranks its seeds

The model and its dataset are rebuilt from the checkpoint alone.  The scores
are printed as a table, written as JSON beside each checkpoint (each metric
with its parameters, the checkpoint, the seed and the values) and added to the
run's TensorBoard log.  A progress bar per metric goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import yaml

from sbvae import runs
from sbvae.errors import SBVAEError
from sbvae.evaluation import (
    DEFAULT_METRICS,
    GROUP_METRICS,
    METRICS,
    PRESETS,
    parse_metrics,
    records,
    scalars,
    score,
    score_group,
)
from sbvae.loading import model_from_checkpoint
from sbvae.metrics import MetricResult


def resolve_device(name: str) -> torch.device:
    """--device as a torch device: auto, cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise SBVAEError(f"--device {name} is not a device sbvae runs on: use cpu, cuda, cuda:N or auto.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SBVAEError(f"--device {name} was asked for but no CUDA device is visible; use --device cpu or auto.")
    return device


def table(results: dict[str, MetricResult]) -> str:
    lines = [f"{'metric':<12} {'score':>8}  details"]
    for name, result in results.items():
        details = {k: v for k, v in result.scalars().items() if k != "score"}
        lines.append(f"{name:<12} {result.score:>8.4f}  " + ", ".join(f"{k}={v:.4g}" for k, v in details.items()))
    return "\n".join(lines)


def log_to_tensorboard(run_dir: str, results: dict[str, MetricResult], step: int, preset: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run_dir) as writer:
        suffix = "" if preset == "paper" else f"_{preset}"
        for tag, value in scalars(results).items():
            writer.add_scalar(f"eval/{tag}{suffix}", value, step)


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SBVAEError(f"--dataset-option expects KEY=VALUE (e.g. split=heldout), got {item!r}.")
        options[key] = yaml.safe_load(value)
    return options


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sbvae-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", required=True, help="a checkpoint written by sbvae-train, or a run folder (every replica's last.ckpt)"
    )
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated, from: {', '.join([*METRICS, *GROUP_METRICS])} (udr: a replica run's folder)",
    )
    parser.add_argument(
        "--preset",
        default="paper",
        choices=sorted(PRESETS),
        help="paper: disentanglement_lib sizes; quick: smoke-test sizes",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", help="JSON file to write (default: eval-<preset>-seed<seed>.json beside each checkpoint)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="threads fitting the per-factor classifiers of dci and downstream (the same scores; -1: every core)",
    )
    parser.add_argument(
        "--no-tensorboard", action="store_true", help="do not add the scores to the run's TensorBoard log"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dataset option of the checkpoint, e.g. split=heldout for a hold-out circles run (repeatable)",
    )
    return parser.parse_args(argv)


def evaluate(
    path: str,
    args: argparse.Namespace,
    names: list[str],
    device: torch.device,
    options: dict,
    group_results: dict[str, MetricResult] | None = None,
) -> None:
    """Score one checkpoint: print the table, write the JSON, add the scores to its TensorBoard run.
    ``group_results``: this checkpoint's share of the group metrics, scored over its run's replicas."""
    model, datamodule, ckpt = model_from_checkpoint(path, device, options)
    start = time.perf_counter()
    single = [n for n in names if n not in GROUP_METRICS]
    results = (
        score(
            model,
            datamodule.data,
            single,
            preset=args.preset,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
            jobs=args.jobs,
        )
        if single
        else {}
    )
    results.update(group_results or {})
    seconds = time.perf_counter() - start
    print(table(results))
    record = {
        "checkpoint": os.path.abspath(path),
        "global_step": ckpt.get("global_step"),
        "model": ckpt["sbvae_model_class"],
        "dataset": dict(datamodule.hparams),  # with any --dataset-option applied
        "preset": args.preset,
        "seed": args.seed,
        "device": str(device),
        "seconds": round(seconds, 3),
        "software": software_versions(),
        "metrics": records(results, args.preset, args.seed),
    }
    output = args.output or runs.eval_output(path, args.preset, args.seed)
    record["metrics"] = {**earlier_scores(output, record), **record["metrics"]}
    with runs.atomic_path(output) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {output}")
    run_dir = None if args.no_tensorboard else runs.run_dir_of(path)
    if run_dir:
        log_to_tensorboard(run_dir, results, ckpt.get("global_step", 0), args.preset)
        print(f"added eval/* scalars to the TensorBoard run {run_dir}")


def software_versions() -> dict[str, str]:
    """What computed the scores: a score moves with the estimators' library as well as with sbvae."""
    import numpy
    import sklearn

    import sbvae

    return {
        "sbvae": sbvae.__version__,
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
    }


def earlier_scores(output: str, record: dict) -> dict:
    """The metrics an earlier sbvae-eval wrote to ``output`` for this very checkpoint, step, dataset, preset and
    seed, which a later call keeps beside its own (UDR scored over a run folder after each replica's MIG).
    Scores of the same checkpoint on other data (another ``--dataset-option``) are never mixed in."""
    try:
        with open(output) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return {}
    same = all(earlier.get(key) == record[key] for key in ("checkpoint", "global_step", "dataset", "preset", "seed"))
    return earlier.get("metrics", {}) if same and isinstance(earlier.get("metrics"), dict) else {}


def group_shares(
    paths: list[str], args: argparse.Namespace, names: list[str], device: torch.device, options: dict
) -> list[dict[str, MetricResult]]:
    """The group metrics (UDR) over every checkpoint of the run at once, split into each one's share."""
    if not any(n in GROUP_METRICS for n in names):
        return [{} for _ in paths]
    loaded = [model_from_checkpoint(path, device, options) for path in paths]
    steps = {ckpt.get("global_step") for _, _, ckpt in loaded}
    if len(steps) > 1:
        raise SBVAEError(
            f"{args.ckpt}'s replicas stand at different steps {sorted(steps)}: resume the run until they "
            "finish, then score them together."
        )
    print(
        f"scoring {', '.join(n for n in names if n in GROUP_METRICS)} over the {len(paths)} checkpoints of {args.ckpt}"
    )
    return score_group(
        [model for model, _, _ in loaded],
        loaded[0][1].data,
        names,
        preset=args.preset,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        names = parse_metrics(args.metrics)
        device = resolve_device(args.device)
        options = parse_options(args.dataset_option)
        paths = runs.checkpoints_to_score(args.ckpt)
        if args.output and len(paths) > 1:
            raise SBVAEError(
                f"--output names one file but {args.ckpt} holds {len(paths)} replicas: leave --output out "
                "to write each replica's JSON beside its checkpoint."
            )
        shares = group_shares(paths, args, names, device, options)
        for path, share in zip(paths, shares):
            if len(paths) > 1:
                print(f"\n{path}")
            evaluate(path, args, names, device, options, share)
    except (SBVAEError, ValueError) as error:
        print(f"sbvae-eval: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
