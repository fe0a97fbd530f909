"""3D Shapes = "3D Object-in-Room" (deepmind/3d-shapes), read lazily from ``3dshapes.h5``.

Format: ``images`` (480000, 64, 64, 3) uint8 and ``labels`` (480000, 6)
float64; factors in order floor_hue 10, wall_hue 10, object_hue 10 (values
0.0 .. 0.9), scale 8 (linspace(0.75, 1.25, 8)), shape 4 (0 cube, 1 cylinder,
2 sphere, 3 pill), orientation 15 (linspace(-30, 30, 15) degrees); every
combination once with the last factor fastest.  Rendered by MuJoCo, so there
is no generator here: load only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.common import area_downsample, check_file_image_size
from sbvae.datasets.common import data_dir as resolve_data_dir
from sbvae.datasets.file_check import FileCheck, check_grid

SHAPES3D_FILE = "3dshapes.h5"
SHAPES3D_SOURCE = "github.com/deepmind/3d-shapes (gs://3d-shapes/3dshapes.h5)"
FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)


def check_h5(path: Path, allow_subset: bool = False) -> FileCheck:
    """Check a 3dshapes.h5: keys, shapes, dtypes, and that its labels are the factor grid, orientation fastest.

    The report's ``values`` are the label values present, per factor.
    """
    import h5py

    report = FileCheck(FACTOR_SIZES)
    try:
        with h5py.File(path, "r") as f:
            keys = sorted(f.keys())
            for key in keys:
                obj = f[key]
                report.lines.append(
                    f"  {key}: shape {getattr(obj, 'shape', '?')}, dtype {getattr(obj, 'dtype', '(group)')}"
                )
            if not {"images", "labels"} <= set(keys):
                return report.fail(f"it lacks the key(s) images and/or labels (found: {', '.join(keys) or 'none'})")
            images, labels = f["images"], f["labels"]
            n = images.shape[0] if images.ndim else -1
            if images.shape != (n, 64, 64, 3) or images.dtype != np.uint8:
                return report.fail(
                    f"images has shape {images.shape} and dtype {images.dtype}, expected ({n}, 64, 64, 3) uint8"
                )
            if labels.shape != (n, 6) or labels.dtype != np.float64:
                return report.fail(
                    f"labels has shape {labels.shape} and dtype {labels.dtype}, expected ({n}, 6) float64"
                )
            label_array = labels[()]
    except (OSError, ValueError, KeyError) as e:
        return report.fail(f"it cannot be read as HDF5 (truncated or not an HDF5 file: {e})")
    return check_grid(report, label_array, "labels", FACTOR_NAMES, allow_subset)


class Shapes3D(GroundTruthData):
    """3D Shapes (3D Object-in-Room): 3 channels, 6 factors, read lazily from ``3dshapes.h5``.

    Factors: floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4,
    orientation 15; ``factor_values`` returns the file's labels (hues in
    [0, 0.9], scale 0.75..1.25, shape 0..3, orientation in degrees).

    Options:
        path: the file (default ``3dshapes.h5`` in the data directory).
        data_dir: the data directory (default $SBVAE_DATA or ~/.cache/sbvae).
        image_size: 64 or a divisor of 64 (area-averaged).
        in_memory: read all images (5.9 GB) once and keep them on the render
            device; otherwise each batch is read from the file (sorted unique
            index reads, then reordered) and moved there.
        allow_subset: accept a file whose labels form a smaller full grid in
            the same order (tests, previews); factor sizes then follow the file.
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    channels = 3
    name = "shapes3d"
    description = "3D Shapes / 3D Object-in-Room (3dshapes.h5, load only), 6 factors"

    def __init__(
        self,
        *,
        path: str | None = None,
        data_dir: str | None = None,
        image_size: int = 64,
        in_memory: bool = False,
        allow_subset: bool = False,
    ):
        directory = resolve_data_dir(data_dir)
        self.path = Path(path).expanduser() if path is not None else directory / SHAPES3D_FILE
        help = (
            f"get {SHAPES3D_FILE} from {SHAPES3D_SOURCE} and point to it with the option path=... "
            f"or put it in the data directory ({directory})"
        )
        if not self.path.is_file():
            raise DataError(f"shapes3d: the file {self.path} does not exist; {help}.")
        self.image_size = check_file_image_size("shapes3d", image_size)
        report = check_h5(self.path, allow_subset=allow_subset)
        report.require_usable(self.path, "3dshapes", help)
        self.factor_sizes = tuple(len(v) for v in report.values)
        self._values = [torch.from_numpy(v) for v in report.values]
        self.bases = [int(np.prod(self.factor_sizes[k + 1 :])) for k in range(6)]
        self.in_memory = bool(in_memory)

    def _dataset(self):
        import h5py

        files = self._cache("file")  # one handle per process: reopened after a fork
        if os.getpid() not in files:
            files.clear()
            files[os.getpid()] = h5py.File(self.path, "r")
        return files[os.getpid()]["images"]

    def _read(self, index: np.ndarray) -> torch.Tensor:
        """uint8 [n, 64, 64, 3] for flat indices, read with sorted unique indices then reordered."""
        unique, inverse = np.unique(index, return_inverse=True)
        return torch.from_numpy(self._dataset()[unique])[torch.from_numpy(inverse.reshape(-1))]

    @property
    def device_pure_render(self) -> bool:
        """Only with ``in_memory``: otherwise each batch is read from the file on the host."""
        return self.in_memory

    def render(self, factors: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_factors(factors)
        device = factors.device
        bases = self._cache("bases")
        if device not in bases:
            bases[device] = torch.tensor(self.bases, device=device)
        index = (factors * bases[device]).sum(1)
        if self.in_memory:
            cache = self._cache("images")
            if device not in cache:
                cache[device] = torch.from_numpy(self._dataset()[()]).to(device)
            raw = cache[device][index]
        else:
            raw = self._read(index.cpu().numpy()).to(device, non_blocking=True)
        images = raw.permute(0, 3, 1, 2).float().div_(255.0)
        return area_downsample(images, self.image_size)

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        self.check_factors(factors)
        return torch.stack([v.to(factors.device)[factors[:, k]] for k, v in enumerate(self._values)], dim=1).float()
