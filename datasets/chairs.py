"""Chairs (Aubry et al. 2014): a folder of renderings, grey, cropped, resized and cached.

The original is 86,366 600x600 PNGs under ``rendered_chairs/<chair>/renders/``
(62 per chair).  Any folder of images works (searched recursively, in sorted
path order).  Each image is converted to grey, cropped (by default to the
customary 430x430 box from (128, 128) to (558, 558) when it is 600x600),
resized with torchvision (Lanczos) to ``image_size`` and the whole set is
cached as one uint8 ``.npy`` under the data directory (written to a temporary
name, then renamed), keyed on the folder's file list, crop and size.  There
are no ground-truth factors: the only "factor" is the image index, and
metrics refuse the dataset (``has_ground_truth = False``).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.common import check_int
from sbvae.datasets.common import data_dir as resolve_data_dir
from sbvae.runs import atomic_path

CHAIRS_FOLDER = "rendered_chairs"
CHAIRS_SOURCE = "https://www.di.ens.fr/willow/research/seeing3Dchairs/ (rendered_chairs.tar)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_CROP = (128, 128, 558, 558)  # (left, top, right, bottom) for 600x600 renderings


def _load_one(path: Path, crop, image_size: int) -> np.ndarray:
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    with Image.open(path) as im:
        grey = im.convert("L")
    box = DEFAULT_CROP if crop == "auto" and grey.size == (600, 600) else None if crop == "auto" else crop
    if box is not None:
        grey = grey.crop(tuple(box))
    out = resize(grey, [image_size, image_size], interpolation=InterpolationMode.LANCZOS, antialias=True)
    return np.asarray(out, dtype=np.uint8)


class Chairs(GroundTruthData):
    """Grey chair renderings, 1 channel, no ground truth (factor: the image index).

    Options:
        path: the image folder (default ``rendered_chairs`` in the data directory).
        data_dir: the data directory, where the cache is written too.
        image_size: any size >= 8 (resized from the source images).
        crop: "auto" (the 430x430 box from (128, 128) on 600x600 images, none
            otherwise), None (no crop) or a box (left, top, right, bottom) in pixels.
        cache: write the processed images to the data directory (default True).
        workers: threads decoding images when building the cache (default: the CPU count).
    """

    factor_names = ("index",)
    channels = 1
    has_ground_truth = False
    name = "chairs"
    description = "3D chairs renderings (a folder of images), grey; no ground-truth factors"

    def __init__(
        self,
        *,
        path: str | None = None,
        data_dir: str | None = None,
        image_size: int = 64,
        crop: str | tuple[int, int, int, int] | None = "auto",
        cache: bool = True,
        workers: int | None = None,
    ):
        directory = resolve_data_dir(data_dir)
        self.folder = Path(path).expanduser() if path is not None else directory / CHAIRS_FOLDER
        self.image_size = check_int("chairs", "image_size", image_size, 8)
        if crop != "auto" and crop is not None:
            if (
                len(tuple(crop)) != 4
                or not all(isinstance(c, int) and c >= 0 for c in crop)
                or crop[2] <= crop[0]
                or crop[3] <= crop[1]
            ):
                raise DataError(
                    f"chairs: option crop must be 'auto', None or a box (left, top, right, bottom), got {crop!r}."
                )
            crop = tuple(crop)
        self.crop = crop
        where = f"download {CHAIRS_SOURCE}, unpack it and point to the folder with the option path=... or put it in the data directory ({directory})"
        if not self.folder.is_dir():
            raise DataError(f"chairs: the image folder {self.folder} does not exist; {where}.")
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"chairs: the folder {self.folder} holds no images; {where}.")
        self.files = files
        key = json.dumps(
            {
                "folder": str(self.folder.resolve()),
                "crop": crop,
                "size": image_size,
                "version": 1,
                "files": [(str(p.relative_to(self.folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files],
            }
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        self.cache_path = directory / "chairs" / f"chairs-{image_size}px-{digest}.npy"
        images = None
        if self.cache_path.is_file():
            try:
                images = np.load(self.cache_path, allow_pickle=False)
                if images.shape != (len(files), image_size, image_size) or images.dtype != np.uint8:
                    images = None
            except (OSError, ValueError):
                images = None
        if images is None:
            images = self._build(files, workers)
            if cache:
                with atomic_path(self.cache_path) as tmp, open(tmp, "wb") as f:
                    np.save(f, images, allow_pickle=False)
        self.images = torch.from_numpy(images)
        self.factor_sizes = (len(files),)

    def _build(self, files: list[Path], workers: int | None) -> np.ndarray:
        out = np.empty((len(files), self.image_size, self.image_size), dtype=np.uint8)
        try:
            with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
                for i, image in enumerate(pool.map(lambda p: _load_one(p, self.crop, self.image_size), files)):
                    out[i] = image
        except (OSError, ValueError) as e:
            raise DataError(
                f"chairs: an image under {self.folder} cannot be read ({e}); remove or replace it."
            ) from None
        return out

    def render(self, factors: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_factors(factors)
        cache = self._cache("images")
        if factors.device not in cache:
            cache[factors.device] = self.images.to(factors.device)
        return cache[factors.device][factors[:, 0]].unsqueeze(1).float().div_(255.0)

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        """The image index as a float [n, 1] (there is nothing else)."""
        self.check_factors(factors)
        return factors.float()
