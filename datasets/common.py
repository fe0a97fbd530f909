"""Helpers shared by the datasets: the data directory, option checks, colour."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from sbvae import keyed
from sbvae.datasets.base import DataError

ENV_VAR = "SBVAE_DATA"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else $SBVAE_DATA, else ~/.cache/sbvae (XDG_CACHE_HOME honoured)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "sbvae"


def check_int(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{owner}: option {name} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_choice(owner: str, name: str, value, choices) -> str:
    if value not in choices:
        raise DataError(f"{owner}: option {name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def check_file_image_size(owner: str, image_size) -> int:
    """File-based datasets store 64x64 images and area-average them down by an integer factor."""
    check_int(owner, "image_size", image_size, 1)
    if image_size > 64 or 64 % image_size:
        raise DataError(
            f"{owner} stores 64x64 images and can only area-average them down by an integer factor, so "
            f"image_size must divide 64 (64, 32, 16, 8, 4, 2, 1), got {image_size}."
        )
    return image_size


def area_downsample(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Average non-overlapping blocks: [n, C, 64, 64] -> [n, C, image_size, image_size]."""
    factor = images.shape[-1] // image_size
    return images if factor == 1 else F.avg_pool2d(images, factor)


def bin_values(
    bins: torch.Tensor, count: int, low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Continuous values for bin indices: ``count`` equal bins over [low, high].

    With a generator, a value is drawn uniformly inside its bin (so uniform bins
    give exactly the continuous uniform distribution); without one, the bin centre.
    ``bins`` is [n, k] (long); the draw is [n, k] from the generator (on its own
    device, then moved to the bins' device).
    """
    if generator is None:
        u = torch.full(bins.shape, 0.5, device=bins.device)
    else:
        u = keyed.rand(bins.shape, generator).to(bins.device)
    return low + (high - low) * (bins.float() + u) / count


def bin_centres(bins: torch.Tensor, count: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * (bins.float() + 0.5) / count


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """[..., 3] HSV in [0, 1] -> [..., 3] RGB in [0, 1] (the same as colorsys.hsv_to_rgb, vectorized).

    Uses c_n = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 and n = 5, 3, 1 for R, G, B.
    """
    h, s, v = hsv.unbind(-1)
    n = 5.0 - 2.0 * torch.arange(3, device=hsv.device, dtype=hsv.dtype)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-1), 6.0)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
