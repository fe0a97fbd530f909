"""sbvae-data: list the datasets, generate dSprites in the official format, verify a data file.

    sbvae-data list [--data-dir DIR]
    sbvae-data generate dsprites --out DIR [--subset posX=0,31 --subset shape=2] [--device cuda]
    sbvae-data verify FILE [--allow-subset] [--quick]

User errors print one sentence and exit with status 2; ``verify`` exits with 1
when the file is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sbvae.datasets.base import DataError

PROG = "sbvae-data"


def _factors(name: str) -> str:
    from sbvae.datasets import Shapes3D, load

    if name == "chairs":
        return "index (one per image; no ground truth)"
    if name == "shapes3d":
        data = Shapes3D
    else:
        data = load(name, source="procedural") if name in ("dsprites", "colored-sprites") else load(name)
    return ", ".join(f"{n} {s}" for n, s in zip(data.factor_names, data.factor_sizes))


def cmd_list(args) -> int:
    from sbvae.datasets.common import data_dir
    from sbvae.datasets.registry import data_files, registry

    directory = data_dir(args.data_dir)
    print(f"data directory: {directory} (option data_dir / --data-dir, or $SBVAE_DATA)")
    for name, entry in registry().items():
        print(f"\n{name}: {entry.description}")
        print(f"  factors: {_factors(name)}")
        print(f"  options: {', '.join(entry.options())}")
        for what, path, present in data_files(name, args.data_dir):
            print(f"  {what}: {path} [{'present' if present else 'missing'}]")
    return 0


def _parse_subset(items: list[str]) -> dict[str, list[int]]:
    subset: dict[str, list[int]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            if not sep:
                raise ValueError
            subset[name.strip()] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise DataError(f"--subset takes FACTOR=i,j,... (for example posX=0,31), got {item!r}.") from None
    return subset


def cmd_generate(args) -> int:
    from sbvae.datasets.npz import write_dsprites_npz
    from sbvae.datasets.sprites import DSPRITES_FILE

    out = Path(args.out).expanduser() / DSPRITES_FILE
    if out.exists() and not args.force:
        raise DataError(f"{out} already exists; pass --force to overwrite it.")
    subset = _parse_subset(args.subset or [])
    if args.chunk < 1:
        raise DataError(f"--chunk must be a positive number of images, got {args.chunk}.")
    started, shown = time.time(), [-1]

    def progress(done: int, total: int) -> None:
        pct = 100 * done // total
        if pct // 5 != shown[0] or done == total:
            shown[0] = pct // 5
            print(
                f"\r{done}/{total} images ({pct}%), {time.time() - started:.0f} s", end="", file=sys.stderr, flush=True
            )

    try:
        import torch

        device = torch.device(args.device)
    except RuntimeError:
        raise DataError(f"--device {args.device!r} is not a torch device (use cpu, cuda, cuda:1, ...).") from None
    path = write_dsprites_npz(out, subset=subset, chunk=args.chunk, device=device, progress=progress)
    print(file=sys.stderr)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.time() - started:.0f} s")
    if subset:
        print(
            "it is a sub-grid under the official name: train on it with data.dataset_options {allow_subset: true}; "
            "a full-grid run refuses this folder's file."
        )
    return 0


def cmd_verify(args) -> int:
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    if path.suffix.lower() in (".h5", ".hdf5"):
        from sbvae.datasets.shapes3d import check_h5

        report, kind = check_h5(path, allow_subset=args.allow_subset), "3dshapes HDF5"
    else:
        from sbvae.datasets.npz import check_npz

        report, kind = check_npz(path, scan_images=not args.quick, allow_subset=args.allow_subset), "dSprites npz"
    print(f"{path} ({kind}):")
    for line in report.lines:
        print(line)
    if report.problems:
        hint = "; a file of sbvae-data generate --subset passes with --allow-subset" if report.is_subset else ""
        print(f"WRONG: {report.problems[0]}{hint}.")
        return 1
    print("OK: keys, shapes, dtypes and the factor grid match the official format.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="sbvae datasets: list, generate, verify.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="datasets, their factors and sizes, and whether their files are present")
    p.add_argument("--data-dir", default=None, help="data directory (default $SBVAE_DATA or ~/.cache/sbvae)")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("generate", help="write a synthetic dataset in its official file format")
    p.add_argument("dataset", choices=["dsprites"])
    p.add_argument("--out", required=True, help="output folder (the official file name is used)")
    p.add_argument(
        "--subset",
        action="append",
        metavar="FACTOR=i,j,...",
        help="restrict a factor to these class indices (repeatable; for previews and tests)",
    )
    p.add_argument("--chunk", type=int, default=8192, help="images rendered per vectorized chunk")
    p.add_argument("--device", default="cpu", help="torch device to render on (cpu, cuda, ...)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("verify", help="check a data file's keys, shapes, dtypes and factor grid")
    p.add_argument("file", help="a dSprites .npz or a 3dshapes .h5")
    p.add_argument("--allow-subset", action="store_true", help="accept a sub-grid written with --subset")
    p.add_argument("--quick", action="store_true", help="skip reading every image of an npz")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except DataError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted (no partial file was left under the final name).", file=sys.stderr)
        code = 130
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
