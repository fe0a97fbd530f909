"""dSprites (binary) and colored sprites, rendered on the device or read from the official file.

The procedural renderer follows the geometry measured on the official frames
(see the specs, DATASETS.md): centre (0.25 + 0.5 posX, 0.25 + 0.5 posY) in a
1 x 1 frame with y down; square half-side 0.15 s; ellipse semi-axes 0.2 s and
0.1125 s; a parametric heart with its lobes up; rotation counter-clockwise as
displayed; a pixel is on when its centre lies inside the shape (no
anti-aliasing).  It matches the official frames to within a few pixels per
image, renders any batch of factor indices in one vectorized pass on
``factors.device`` and never builds the grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.common import (
    area_downsample,
    bin_centres,
    bin_values,
    check_choice,
    check_file_image_size,
    check_int,
    hsv_to_rgb,
)
from sbvae.datasets.common import (
    data_dir as resolve_data_dir,
)

# The official file and its grid: (color, shape, scale, orientation, posX, posY), posY fastest.
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_SOURCE = "github.com/deepmind/dsprites-dataset"
LATENT_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
LATENT_SIZES = (1, 3, 6, 40, 32, 32)
LATENT_VALUES = (
    np.array([1.0]),
    np.array([1.0, 2.0, 3.0]),  # square, ellipse, heart
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),  # 0 and 2 pi both present: index 39 == index 0
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
SHAPE_NAMES = ("square", "ellipse", "heart")

# Geometry in units of the frame, for scale 1 (multiplied by the scale value).
SQUARE_HALF = 0.15
ELLIPSE_AXES = (0.2, 0.1125)
HEART_X, HEART_Y, HEART_Y0 = 0.15, 0.0104, 0.0219


def heart_outline(points: int = 2000) -> np.ndarray:
    """The heart's outline [points, 2] (x right, y down, lobes up) in local units at scale 1."""
    t = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    x = HEART_X * np.sin(t) ** 3
    y = -HEART_Y * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - HEART_Y0
    return np.stack([x, y], axis=1)


# Shapes are looked up in bitmaps: three tiles (square, ellipse, heart)
# of 1000 x 1000 texels over local coordinates [-0.25, 0.25]^2, filled once
# (square and ellipse by their inequalities, the heart by the even-odd rule
# against a 2000-gon) at texel centres.  The square's and ellipse's edges fall
# exactly on texel edges; a texel is 0.0005 local units (0.03 px at 64 px).
# The tiles sit side by side in one atlas; a sampling grid written in three
# elementwise passes and one grid_sample (nearest) per batch then rasterise any
# mix of shapes, positions, scales and angles, several times cheaper than three
# inside tests per pixel.
_TEX_RES = 1000
_TEX_HALF = 0.25
_ATLASES: dict[torch.device, torch.Tensor] = {}


def _shape_tiles() -> torch.Tensor:
    """Bool [3, R, R]: square, ellipse and heart sampled at texel centres (row = y down, column = x)."""
    c = (torch.arange(_TEX_RES, dtype=torch.float64) + 0.5) * (2 * _TEX_HALF / _TEX_RES) - _TEX_HALF
    ly, lx = c[:, None], c[None, :]
    square = torch.maximum(lx.abs(), ly.abs()) <= SQUARE_HALF
    ellipse = (lx / ELLIPSE_AXES[0]) ** 2 + (ly / ELLIPSE_AXES[1]) ** 2 <= 1.0
    poly = torch.from_numpy(heart_outline())
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = x0.roll(-1), y0.roll(-1)
    straddle = (y0 <= ly) != (y1 <= ly)  # [R, E]: edges crossing each texel row
    xint = x0 + (ly - y0) * (x1 - x0) / torch.where(y1 == y0, torch.ones_like(y0), y1 - y0)
    xint = torch.where(straddle, xint, torch.full_like(xint, -math.inf)).sort(dim=1).values
    right = xint.shape[1] - torch.searchsorted(xint, c.expand(_TEX_RES, -1).contiguous(), right=True)
    heart = right % 2 == 1  # crossings to the right of the texel centre: odd = inside
    return torch.stack([square.expand_as(heart), ellipse, heart])


def _atlas(device: torch.device) -> torch.Tensor:
    """Float [1, 1, R, 3R]: the three tiles side by side, on ``device``."""
    if device not in _ATLASES:
        cpu = torch.device("cpu")
        if cpu not in _ATLASES:
            _ATLASES[cpu] = torch.cat(list(_shape_tiles()), dim=1).float()[None, None].contiguous()
        _ATLASES[device] = _ATLASES[cpu].to(device)
    return _ATLASES[device]


def sprite_masks(
    shape: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    pos_x: torch.Tensor,
    pos_y: torch.Tensor,
    image_size: int = 64,
) -> torch.Tensor:
    """Binary sprites, float [n, 1, image_size, image_size] in {0, 1}, on the inputs' device.

    ``shape`` holds class indices (0 square, 1 ellipse, 2 heart); ``scale``,
    ``angle`` (radians), ``pos_x`` and ``pos_y`` (in [0, 1]) are float values,
    all of shape [n].  A pixel is on when its centre lies inside the shape:
    centre (0.25 + 0.5 pos_x, 0.25 + 0.5 pos_y), y down, and local coordinates
    lx = (cos a dx - sin a dy) / s, ly = (sin a dx + cos a dy) / s.
    """
    n, device = shape.shape[0], shape.device
    dtype = torch.float32
    cos, sin = torch.cos(angle).to(dtype).view(-1, 1), torch.sin(angle).to(dtype).view(-1, 1)
    k = (1.0 / (_TEX_HALF * scale.to(dtype))).view(-1, 1)  # local units -> tile coordinates in [-1, 1]
    c = (torch.arange(image_size, device=device, dtype=dtype) + 0.5) / image_size
    dx = c.view(1, -1) - (0.25 + 0.5 * pos_x.to(dtype)).view(-1, 1)  # [n, W]
    dy = c.view(1, -1) - (0.25 + 0.5 * pos_y.to(dtype)).view(-1, 1)  # [n, H]
    # The sampling grid is affine and separable: tile x = (cos dx - sin dy) k = X[n, w] + Y[n, h],
    # tile y = (sin dx + cos dy) k.  Shape j's tile spans atlas x in [(2j - 3) / 3, (2j - 1) / 3],
    # hence x / 3 + (2j - 2) / 3, clamped to the tile so that far pixels land on its empty border
    # rather than in a neighbouring tile.  Written in place into grid_sample's [n, H, W, 2] layout.
    third = (2.0 * shape.to(dtype).view(-1, 1) - 2.0) / 3.0
    grid = torch.empty(n, image_size, image_size, 2, device=device, dtype=dtype)
    gx, gy = grid[..., 0], grid[..., 1]
    torch.add(((cos * k / 3) * dx + third).unsqueeze(1), ((-sin * k / 3) * dy).unsqueeze(2), out=gx)
    torch.clamp(gx, min=(third - 1 / 3).unsqueeze(2), max=(third + 1 / 3).unsqueeze(2), out=gx)
    torch.add(((sin * k) * dx).unsqueeze(1), ((cos * k) * dy).unsqueeze(2), out=gy)
    grid = grid.view(1, n * image_size, image_size, 2)
    out = F.grid_sample(_atlas(device), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.view(n, 1, image_size, image_size)


def render_dsprites_indices(factors: torch.Tensor, image_size: int = 64) -> torch.Tensor:
    """Binary sprites float [n, 1, H, W] for dSprites class indices [n, 5] (shape, scale, orientation, posX, posY)."""
    shape, scale, orient, px, py = factors.unbind(1)
    # linspace(0.5, 1, 6), linspace(0, 2 pi, 40) and linspace(0, 1, 32) by arithmetic on the device;
    # orientation 39 is 2 pi, taken modulo 39 so that it renders exactly as orientation 0.
    return sprite_masks(
        shape,
        0.5 + 0.1 * scale.float(),
        (orient % 39).float() * (2 * math.pi / 39),
        px.float() / 31,
        py.float() / 31,
        image_size,
    )


def _dsprites_file_help(where: Path | None) -> str:
    at = f" or put it in the data directory ({where})" if where is not None else ""
    return (
        f"get the official {DSPRITES_FILE} from {DSPRITES_SOURCE} (or write one with "
        f"`sbvae-data generate dsprites`) and point to it with the option path=...{at}"
    )


class DSprites(GroundTruthData):
    """dSprites: 1-channel binary sprites, the 5 factors of disentanglement_lib.

    Factors (class indices): shape 3 (square, ellipse, heart), scale 6
    (linspace(0.5, 1, 6)), orientation 40 (linspace(0, 2 pi, 40): index 39
    renders as index 0, as in the original), posX 32 and posY 32
    (linspace(0, 1, 32)); the original's constant colour factor is dropped.

    Options:
        image_size: side in pixels. The procedural renderer samples pixel
            centres at any size >= 8; the file is area-averaged from 64 and
            needs a divisor of 64.
        source: ``"auto"`` (the official file if ``path`` is given or the
            file is in the data directory, else procedural), ``"procedural"``
            or ``"file"``.
        path: the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.
        data_dir: where to look for it (default $SBVAE_DATA or ~/.cache/sbvae).
        allow_subset: accept a file holding only a sub-grid (as written by
            ``sbvae-data generate dsprites --subset``); factor sizes then follow
            the file and index i of a factor means its i-th class in the file.
    """

    factor_names = ("shape", "scale", "orientation", "posX", "posY")
    factor_sizes = LATENT_SIZES[1:]
    channels = 1
    name = "dsprites"
    description = "dSprites, binary 2D shapes (DL's 5 factors); official npz or procedural renderer"

    def __init__(
        self,
        *,
        image_size: int = 64,
        source: str = "auto",
        path: str | None = None,
        data_dir: str | None = None,
        allow_subset: bool = False,
    ):
        owner = type(self).name or "dsprites"
        check_choice(owner, "source", source, ("auto", "procedural", "file"))
        directory = resolve_data_dir(data_dir)
        file = Path(path).expanduser() if path is not None else directory / DSPRITES_FILE
        if source == "auto":
            source = "file" if path is not None or file.is_file() else "procedural"
        self.source = source
        self.file = None
        self._values = [torch.from_numpy(v) for v in LATENT_VALUES[1:]]
        if source == "procedural":
            self.image_size = check_int(owner, "image_size", image_size, 8)
            return
        from sbvae.datasets.npz import DSpritesNpz

        self.image_size = check_file_image_size(owner, image_size)
        if not file.is_file():
            raise DataError(
                f"{owner}: the dSprites file {file} does not exist; "
                + _dsprites_file_help(directory if path is None else None)
                + "."
            )
        self.file = DSpritesNpz(file, allow_subset=allow_subset, help=_dsprites_file_help(directory))
        self.factor_sizes = self.file.factor_sizes
        self._values = [torch.from_numpy(v) for v in self.file.values]

    def masks(self, factors: torch.Tensor) -> torch.Tensor:
        """Float [n, 1, H, W] in [0, 1] (binary when procedural or at 64 px) on ``factors.device``."""
        self.check_factors(factors)
        return self._masks(factors)

    def _masks(self, factors: torch.Tensor) -> torch.Tensor:
        if self.file is not None:
            return area_downsample(self.file.images(factors), self.image_size)
        return render_dsprites_indices(factors, self.image_size)

    def render(self, factors: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.masks(factors)

    def canonical_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """Orientation 2 pi (index 39 of the official grid) renders as orientation 0: it becomes that index."""
        angle = torch.remainder(self._values[2], 2 * math.pi)
        first = torch.tensor([int(torch.nonzero(torch.isclose(angle, a)).min()) for a in angle], device=factors.device)
        out = factors.clone()
        out[:, 2] = first[factors[:, 2]]
        return out

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        """shape (1, 2, 3 as in the file), scale, orientation (radians), posX, posY: float [n, 5]."""
        self.check_factors(factors)
        return torch.stack([v.to(factors.device)[factors[:, k]] for k, v in enumerate(self._values)], dim=1).float()


class ColoredSprites(GroundTruthData):
    """Colored sprites (Burgess et al. 2018; Watters et al. 2019, A.3): a binary dSprite times one RGB colour.

    The colour of each image comes from HSV with H ~ U[0, 1], S ~ U[0.3, 0.7]
    and V ~ U[0.3, 0.7], drawn on the fly.  Factors: the 5 dSprites factors
    (shape 3, scale 6, orientation 40, posX 32, posY 32) followed by ``hue``,
    ``saturation`` and ``value``: 8 factors, as the paper counts them.

    Binning of the continuous colour: each colour coordinate is cut into
    ``color_bins`` (default 10) equal bins over its range; ``sample_factors``
    draws the bin index uniformly and ``render(factors, generator)`` draws the
    value uniformly inside the bin from ``generator`` (so the training
    distribution is exactly the continuous uniform one).  Without a generator
    ``render`` uses the bin centre, which is also what ``factor_values``
    reports.  Metrics see the bin index as a discrete factor of
    ``color_bins`` classes.

    Options: ``image_size``, ``color_bins``, and ``source``, ``path``,
    ``data_dir``, ``allow_subset`` for the binary sprites (as for dsprites).

    Not disentanglement_lib's ``color_dsprites`` (RGB each U[0.5, 1], colour not a factor).
    """

    channels = 3
    name = "colored-sprites"
    description = "dSprites times a random HSV colour (H U[0,1], S, V U[0.3,0.7]); 8 factors, colour binned"
    HSV_RANGES = ((0.0, 1.0), (0.3, 0.7), (0.3, 0.7))

    def __init__(
        self,
        *,
        image_size: int = 64,
        color_bins: int = 10,
        source: str = "auto",
        path: str | None = None,
        data_dir: str | None = None,
        allow_subset: bool = False,
    ):
        check_int(self.name, "image_size", image_size, 8)  # named here: the sprites below would say dsprites
        self.sprites = DSprites(
            image_size=image_size, source=source, path=path, data_dir=data_dir, allow_subset=allow_subset
        )
        self.image_size = self.sprites.image_size
        self.source = self.sprites.source
        self.color_bins = check_int("colored-sprites", "color_bins", color_bins, 1)
        self.factor_names = DSprites.factor_names + ("hue", "saturation", "value")
        self.factor_sizes = tuple(self.sprites.factor_sizes) + (color_bins,) * 3

    def colors(self, bins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """HSV [n, 3] for colour bin indices [n, 3]: drawn inside the bins from ``generator``, else bin centres."""
        unit = bin_values(bins, self.color_bins, 0.0, 1.0, generator)  # one draw of [n, 3]
        return torch.stack([lo + (hi - lo) * unit[:, k] for k, (lo, hi) in enumerate(self.HSV_RANGES)], dim=1)

    def render(self, factors: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_factors(factors)
        mask = self.sprites._masks(factors[:, :5])
        rgb = hsv_to_rgb(self.colors(factors[:, 5:], generator))
        return mask * rgb.view(-1, 3, 1, 1)

    def canonical_factors(self, factors: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.sprites.canonical_factors(factors[:, :5]), factors[:, 5:]], dim=1)

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        """The 5 dSprites values, then hue, saturation, value at their bin centres: float [n, 8]."""
        self.check_factors(factors)
        colour = [bin_centres(factors[:, 5 + k], self.color_bins, lo, hi) for k, (lo, hi) in enumerate(self.HSV_RANGES)]
        return torch.cat([self.sprites.factor_values(factors[:, :5]), torch.stack(colour, dim=1)], dim=1)
