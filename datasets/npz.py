"""The official dSprites npz: read it safely, write it from the renderer, verify a file.

Format (deepmind/dsprites-dataset): ``imgs`` (737280, 64, 64) uint8 in {0, 1},
``latents_values`` (737280, 6) float64, ``latents_classes`` (737280, 6) int64
with columns (color, shape, scale, orientation, posX, posY), every combination
once with posY varying fastest, and ``metadata``.  The file is read with
``allow_pickle=False`` and ``metadata`` is never loaded (in the original it is
a pickle).  ``imgs`` is streamed from the zip in chunks and kept bit-packed
(377 MB instead of 3 GB); the packed array moves to the render device on first
use and only the requested rows are unpacked there.

``write_dsprites_npz`` writes the same format from the procedural renderer,
streaming ``imgs`` in vectorized chunks, to a temporary name renamed when
complete.  Its ``metadata`` is a numpy structured record (no pickle) with the
original's fields: ``np.load(f)["metadata"][()]["latents_sizes"]`` works.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from sbvae.datasets.base import DataError
from sbvae.datasets.file_check import FileCheck, check_grid
from sbvae.datasets.sprites import (
    DSPRITES_FILE,
    DSPRITES_SOURCE,
    LATENT_NAMES,
    LATENT_SIZES,
    LATENT_VALUES,
    render_dsprites_indices,
)
from sbvae.runs import atomic_path

REQUIRED_KEYS = ("imgs", "latents_values", "latents_classes")
OFFICIAL_N = int(np.prod(LATENT_SIZES))
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def _read_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    return np.lib.format._read_array_header(fp, version)  # 3.0 (utf8 field names): same layout


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], bool, np.dtype]]:
    """(shape, fortran_order, dtype) of every array in an npz, read from the headers alone."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if member.endswith(".npy"):
                with zf.open(member) as fp:
                    out[member[:-4]] = _read_header(fp)
    return out


def grid_rows(classes: list[np.ndarray]) -> np.ndarray:
    """Every combination of the given class lists, last factor fastest: int64 [prod, K]."""
    mesh = np.meshgrid(*classes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1).astype(np.int64)


def check_npz(path: Path, scan_images: bool = False, allow_subset: bool = False) -> FileCheck:
    """Check a dSprites npz: keys, shapes, dtypes, the factor grid and its order; optionally the pixels.

    The report's ``values`` are the latent classes present, per latent (colour included).
    """
    report = FileCheck(LATENT_SIZES)
    try:
        headers = npz_headers(path)
    except _READ_ERRORS as e:
        return report.fail(f"it cannot be read as an npz (truncated or not a zip file: {e})")
    for key in sorted(headers):
        shape, fortran, dtype = headers[key]
        shown = (
            "object (a pickle; not read)"
            if dtype.hasobject
            else "structured record (no pickle)"
            if dtype.names
            else str(dtype)
        )
        report.lines.append(f"  {key}: shape {shape}, dtype {shown}")
    missing = [k for k in REQUIRED_KEYS if k not in headers]
    if missing:
        return report.fail(f"it lacks the key(s) {', '.join(missing)} (found: {', '.join(sorted(headers)) or 'none'})")
    (ishape, ifort, idtype), (vshape, _, vdtype), (cshape, _, cdtype) = (headers[k] for k in REQUIRED_KEYS)
    n = ishape[0] if ishape else -1
    expected = {
        "imgs": ((n, 64, 64), np.dtype(np.uint8), ishape, idtype),
        "latents_values": ((n, 6), np.dtype(np.float64), vshape, vdtype),
        "latents_classes": ((n, 6), np.dtype(np.int64), cshape, cdtype),
    }
    for key, (want_shape, want_dtype, shape, dtype) in expected.items():
        if tuple(shape) != want_shape or dtype != want_dtype:
            return report.fail(f"{key} has shape {tuple(shape)} and dtype {dtype}, expected {want_shape} {want_dtype}")
    if ifort:
        return report.fail("imgs is stored in Fortran order, expected C order")
    try:
        with np.load(path, allow_pickle=False) as npz:
            classes = npz["latents_classes"]
            values = npz["latents_values"]
    except _READ_ERRORS as e:
        return report.fail(f"its latents cannot be read (truncated or corrupt: {e})")
    for k, (name, size) in enumerate(zip(LATENT_NAMES, LATENT_SIZES)):
        if classes[:, k].min(initial=0) < 0 or classes[:, k].max(initial=0) >= size:
            return report.fail(f"latents_classes column {name} holds classes outside 0..{size - 1}")
    table = [LATENT_VALUES[k][classes[:, k]] for k in range(6)]
    if not np.allclose(values, np.stack(table, axis=1), rtol=0, atol=1e-6):
        return report.fail("latents_values does not match the official values of latents_classes")
    if not check_grid(report, classes, "latents_classes", LATENT_NAMES, allow_subset).ok:
        return report
    if scan_images:
        try:
            for start, chunk in iter_images(path):
                if chunk.max(initial=0) > 1:
                    return report.fail(f"imgs holds values other than 0 and 1 (from row {start})")
        except _READ_ERRORS as e:
            return report.fail(f"imgs cannot be read to the end (truncated or corrupt: {e})")
        report.lines.append("  imgs: all values are 0 or 1")
    return report


def iter_images(path: Path, chunk: int = 16384):
    """Yield (first row, uint8 [rows, 64, 64]) chunks of ``imgs``, streamed from the zip."""
    with zipfile.ZipFile(path) as zf, zf.open("imgs.npy") as fp:
        shape, _, _ = _read_header(fp)
        row = int(np.prod(shape[1:]))
        for start in range(0, shape[0], chunk):
            rows = min(chunk, shape[0] - start)
            buf = fp.read(rows * row)
            if len(buf) != rows * row:
                raise EOFError(f"imgs ends after {start + len(buf) // row} of {shape[0]} rows")
            yield start, np.frombuffer(buf, dtype=np.uint8).reshape(rows, *shape[1:])


class DSpritesNpz:
    """A checked dSprites npz; ``images(factors)`` gives float [n, 1, 64, 64] on ``factors.device``."""

    def __init__(self, path: Path, allow_subset: bool = False, help: str = ""):
        self.path = Path(path)
        report = check_npz(self.path, allow_subset=allow_subset)
        report.require_usable(self.path, "dSprites", help or f"get the official {DSPRITES_FILE} from {DSPRITES_SOURCE}")
        classes = report.values[1:]  # colour dropped
        self.factor_sizes = tuple(len(c) for c in classes)
        self.values = [LATENT_VALUES[k + 1][c] for k, c in enumerate(classes)]
        self.bases = [int(np.prod(self.factor_sizes[k + 1 :])) for k in range(len(self.factor_sizes))]
        self._packed: torch.Tensor | None = None
        self._cache_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __getstate__(self):
        return {**self.__dict__, "_packed": None, "_cache_device": {}}

    def packed(self) -> torch.Tensor:
        """All images, bit-packed along rows: uint8 [N, 64, 8] on the CPU (read once, lazily)."""
        if self._packed is None:
            n = int(np.prod(self.factor_sizes))
            out = np.empty((n, 64, 8), dtype=np.uint8)
            try:
                for start, chunk in iter_images(self.path):
                    out[start : start + len(chunk)] = np.packbits(chunk != 0, axis=-1)
            except _READ_ERRORS as e:
                raise DataError(
                    f"{self.path} is not a usable dSprites file: imgs cannot be read to the end ({e}); "
                    f"download {DSPRITES_FILE} again from {DSPRITES_SOURCE} and point to it with path=."
                ) from None
            self._packed = torch.from_numpy(out)
        return self._packed

    def images(self, factors: torch.Tensor) -> torch.Tensor:
        device = factors.device
        if device not in self._cache_device:
            shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
            bases = torch.tensor(self.bases, dtype=torch.long, device=device)
            self._cache_device[device] = (self.packed().to(device), shifts, bases)
        packed, shifts, bases = self._cache_device[device]
        rows = packed[(factors * bases).sum(1)]  # [n, 64, 8]
        bits = (rows.unsqueeze(-1) >> shifts) & 1
        return bits.reshape(-1, 1, 64, 64).float()


def _metadata(sizes: tuple[int, ...], classes: list[np.ndarray]) -> np.ndarray:
    """The original's metadata dict as a structured record (loadable with allow_pickle=False)."""
    values = [LATENT_VALUES[k][c] for k, c in enumerate(classes)]
    possible = np.dtype([(name, np.float64, (len(v),)) for name, v in zip(LATENT_NAMES, values)])
    fields = {
        "date": "written by sbvae-data generate dsprites",
        "description": (
            "Procedurally generated equivalent of dSprites (deepmind/dsprites-dataset): 2D shapes "
            "rendered from the measured geometry, pixel centres, no anti-aliasing. "
            "Every combination of the latents once, posY fastest."
        ),
        "version": 1,
        "latents_names": np.array(LATENT_NAMES),
        "latents_possible_values": np.array(tuple(values), dtype=possible),
        "latents_sizes": np.array(sizes, dtype=np.int64),
        "author": "sbvae (after Matthey, Higgins, Hassabis, Lerchner 2017)",
        "title": "dSprites dataset (procedural)",
    }
    dtype = np.dtype(
        [
            ("date", "U64"),
            ("description", "U256"),
            ("version", np.int64),
            ("latents_names", "U16", (6,)),
            ("latents_possible_values", possible),
            ("latents_sizes", np.int64, (6,)),
            ("author", "U64"),
            ("title", "U64"),
        ]
    )
    record = np.zeros((), dtype=dtype)
    for key, value in fields.items():
        record[key] = value
    return record


def parse_subset(subset: dict[str, object] | None) -> list[np.ndarray]:
    """Class lists for the 6 latents from {factor name: indices}; missing factors take all their classes."""
    subset = dict(subset or {})
    unknown = sorted(set(subset) - set(LATENT_NAMES))
    if unknown:
        raise DataError(
            f"unknown dSprites factor(s) {', '.join(unknown)} in the subset; they are {', '.join(LATENT_NAMES)}."
        )
    classes = []
    for name, size in zip(LATENT_NAMES, LATENT_SIZES):
        c = np.unique(np.asarray(subset.get(name, range(size)), dtype=np.int64).reshape(-1))
        if c.size == 0 or c[0] < 0 or c[-1] >= size:
            raise DataError(f"subset classes for {name} must lie in 0..{size - 1}, got {subset.get(name)!r}.")
        classes.append(c)
    return classes


def write_dsprites_npz(
    path: str | Path,
    subset: dict[str, object] | None = None,
    chunk: int = 8192,
    device: str | torch.device = "cpu",
    progress=None,
) -> Path:
    """Write dSprites in the official npz format from the procedural renderer; returns the path.

    ``subset`` ({factor name: class indices}) restricts the grid (for tests or
    previews); the classes and values stored are the official ones.  ``imgs``
    is rendered in vectorized chunks of ``chunk`` images on ``device`` and
    streamed into the zip, so memory stays small; the file appears under its
    name only when complete.  ``progress(done, total)`` is called per chunk.
    """
    path = Path(path)
    classes = parse_subset(subset)
    sizes = tuple(len(c) for c in classes)
    rows = grid_rows(classes)
    n = len(rows)
    values = np.stack([LATENT_VALUES[k][rows[:, k]] for k in range(6)], axis=1)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, 64, 64)}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with zf.open("imgs.npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array_header_1_0(fp, header)
                for start in range(0, n, chunk):
                    block = torch.from_numpy(rows[start : start + chunk, 1:]).to(device)
                    fp.write(render_dsprites_indices(block, 64).to(torch.uint8).cpu().numpy().tobytes())
                    if progress is not None:
                        progress(min(start + chunk, n), n)
            for key, array in (
                ("latents_classes", rows),
                ("latents_values", values),
                ("metadata", _metadata(sizes, classes)),
            ):
                with zf.open(f"{key}.npy", "w", force_zip64=True) as fp:
                    np.lib.format.write_array(fp, np.asanyarray(array), allow_pickle=False)
    return path


def metadata_dict(path: str | Path) -> dict:
    """The metadata record of a file written by ``write_dsprites_npz`` as a plain dict (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        record = npz["metadata"][()]
    out = {}
    for name in record.dtype.names:
        v = record[name]
        if name == "latents_possible_values":
            out[name] = {k: np.asarray(v[k]) for k in v.dtype.names}
        else:
            out[name] = v.tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v
    return out


__all__ = ["DSpritesNpz", "check_npz", "write_dsprites_npz", "metadata_dict", "parse_subset", "OFFICIAL_N"]
