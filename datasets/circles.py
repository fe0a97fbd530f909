"""Circles (Spriteworld-style; Watters et al. 2019, Table 3): one anti-aliased circle on black.

| name | x | y | size | colour |
|---|---|---|---|---|
| circles-xy | U[0.2, 0.8] | U[0.2, 0.8] | 0.2 | white |
| circles-xh | U[0.2, 0.8] | 0.5 | 0.3 | HSV(U[0.2, 0.8], 1, 1) |
| circles-rg | 0.5 | 0.5 | 0.5 | RGB(U[0.4, 0.8], U[0.4, 0.8], 1) |
| circles-xyh-small | U[0.2, 0.8] | U[0.2, 0.8] | 0.1 | HSV(U[0.2, 0.8], 1, 1) |
| circles-xyh-tiny | U[0.2, 0.8] | U[0.2, 0.8] | 0.075 | HSV(U[0.2, 0.8], 1, 1) |

Geometry: x to the right and y upward (as in Spriteworld, whose frames are
flipped), both in [0, 1] over the frame; ``size`` is the circle's diameter as a
fraction of the frame width, as the paper's text states (a tiny circle is
0.075 x 64 = 4.8 px wide, about 18 px of area).  Spriteworld's own ``scale``
is not the diameter: its circle is a 30-gon of area scale^2, circumradius
0.5663 scale, so at the same number its circles are about 13% wider
(diameter 1.13 scale).  Anti-aliasing: each pixel's coverage is the share of
``supersample`` x ``supersample`` (default 5, Spriteworld's factor) sub-pixel
centres inside the disc (exactly a 5x supersampled drawing box-averaged down),
computed on the device; the colour is multiplied by the coverage.

Continuous factors as classes: each varying factor's range is cut into
``grid`` equal cells (default 32).  ``sample_factors`` draws cell indices;
``render(factors, generator)`` draws the value uniformly inside the cell from
``generator`` (exactly the continuous uniform distribution of the paper), and
without a generator renders the cell centre, which ``factor_values`` reports;
a grid of cell centres is what the latent-geometry plots embed.

Dependent factors: ``holdout="center"`` or ``"corner"`` removes one quarter of
factor space, the product of half of each of two factor ranges (by default
the first two factors: x and y, x and hue, red and green): centre = the middle
half of both ranges (x, y in [0.35, 0.65] for circles-xy), corner = the lower
half of both (x, y in [0.2, 0.5]).  The hole is a whole number of cells
(``grid`` must be a multiple of 4), so jitter never crosses its edge.
``split="train"`` never samples the hole; ``split="heldout"`` samples only
the hole (direct sampling of the allowed cells, vectorized).  ``in_split``
tells which factor rows belong to the split; ``render`` renders any row.

Blank images (Figure 22): ``blank_fraction`` > 0 appends a factor ``presence``
(0 = no circle, 1 = circle); ``sample_factors`` makes that share of images
all black.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sbvae import keyed
from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.common import bin_centres, bin_values, check_choice, check_int, hsv_to_rgb

RANGES = {"x": (0.2, 0.8), "y": (0.2, 0.8), "hue": (0.2, 0.8), "red": (0.4, 0.8), "green": (0.4, 0.8)}


@dataclass(frozen=True)
class CircleVariant:
    factors: tuple[str, ...]
    size: float
    description: str
    x: float = 0.5
    y: float = 0.5


VARIANTS = {
    "circles-xy": CircleVariant(("x", "y"), 0.2, "white circle (size 0.2) varying in x and y"),
    "circles-xh": CircleVariant(("x", "hue"), 0.3, "circle (size 0.3) varying in x and hue, y = 0.5"),
    "circles-rg": CircleVariant(("red", "green"), 0.5, "centred circle (size 0.5) varying in red and green, blue 1"),
    "circles-xyh-small": CircleVariant(("x", "y", "hue"), 0.1, "small circle (size 0.1) varying in x, y and hue"),
    "circles-xyh-tiny": CircleVariant(("x", "y", "hue"), 0.075, "tiny circle (size 0.075) varying in x, y and hue"),
}


class Circles(GroundTruthData):
    """One anti-aliased circle on black, 3 channels; see the module docstring for factors and options.

    Options: ``image_size`` (any size >= 8, rendered natively), ``grid`` (cells
    per continuous factor, default 32), ``holdout`` (None, "center",
    "corner"), ``split`` ("train", "heldout"), ``holdout_factors`` (two factor
    names, default the first two), ``blank_fraction`` (default 0),
    ``supersample`` (default 5).
    """

    channels = 3

    def __init__(
        self,
        variant: str,
        *,
        image_size: int = 64,
        grid: int = 32,
        holdout: str | None = None,
        split: str = "train",
        holdout_factors: tuple[str, str] | list[str] | None = None,
        blank_fraction: float = 0.0,
        supersample: int = 5,
    ):
        if variant not in VARIANTS:
            raise DataError(f"unknown circles variant {variant!r}; they are {', '.join(VARIANTS)}.")
        self.name, self.variant = variant, VARIANTS[variant]
        self.description = self.variant.description
        self.image_size = check_int(variant, "image_size", image_size, 8)
        self.grid = check_int(variant, "grid", grid, 2)
        self.supersample = check_int(variant, "supersample", supersample, 1)
        self.holdout = check_choice(variant, "holdout", holdout, (None, "center", "corner"))
        self.split = check_choice(variant, "split", split, ("train", "heldout"))
        if (
            isinstance(blank_fraction, bool)
            or not isinstance(blank_fraction, (int, float))
            or not 0 <= blank_fraction < 1
        ):
            raise DataError(f"{variant}: option blank_fraction must be a number in [0, 1), got {blank_fraction!r}.")
        self.blank_fraction = float(blank_fraction)
        names = self.variant.factors
        self.factor_names = names + (("presence",) if self.blank_fraction > 0 else ())
        self.factor_sizes = (self.grid,) * len(names) + ((2,) if self.blank_fraction > 0 else ())
        self.hole: tuple[int, int, int, int] | None = None  # factor a, factor b, first cell, end cell
        if self.holdout is None:
            if split != "train" or holdout_factors is not None:
                raise DataError(f"{variant}: options split and holdout_factors need holdout='center' or 'corner'.")
            return
        pair = tuple(holdout_factors) if holdout_factors is not None else names[:2]
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(names):
            raise DataError(
                f"{variant}: holdout_factors must name two different factors among {', '.join(names)}, got {holdout_factors!r}."
            )
        if self.grid % 4:
            raise DataError(
                f"{variant}: a hold-out needs grid to be a multiple of 4 so the hole is whole cells, got {self.grid}."
            )
        lo, hi = (self.grid // 4, 3 * self.grid // 4) if self.holdout == "center" else (0, self.grid // 2)
        self.hole = (names.index(pair[0]), names.index(pair[1]), lo, hi)

    # -- sampling -------------------------------------------------------------------------------
    def in_hole(self, factors: torch.Tensor) -> torch.Tensor:
        """Bool [n]: rows inside the held-out region (all False without a hold-out)."""
        if self.hole is None:
            return torch.zeros(factors.shape[0], dtype=torch.bool, device=factors.device)
        a, b, lo, hi = self.hole
        return (factors[:, a] >= lo) & (factors[:, a] < hi) & (factors[:, b] >= lo) & (factors[:, b] < hi)

    def in_split(self, factors: torch.Tensor) -> torch.Tensor:
        if self.hole is None:
            return super().in_split(factors)
        hole = self.in_hole(factors)
        return hole if self.split == "heldout" else ~hole

    def _allowed_cells(self, device: torch.device) -> torch.Tensor:
        """The (a, b) cell pairs of this split, long [m, 2]."""
        cache = self._cache("cells")
        if device not in cache:
            g = torch.arange(self.grid, device=device)
            pairs = torch.cartesian_prod(g, g)
            _, _, lo, hi = self.hole
            hole = (pairs >= lo).all(1) & (pairs < hi).all(1)
            cache[device] = pairs[hole if self.split == "heldout" else ~hole]
        return cache[device]

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform over the split: independent cells, the hold-out pair drawn from the allowed cells."""
        out = super().sample_factors(n, generator)
        device = out.device
        if self.hole is not None:
            cells = self._allowed_cells(device)
            pick = keyed.randint(len(cells), (n,), generator, device)
            a, b, _, _ = self.hole
            out[:, a], out[:, b] = cells[pick, 0], cells[pick, 1]
        if self.blank_fraction > 0:
            u = keyed.rand((n,), generator, device, torch.float64)
            out[:, -1] = (u >= self.blank_fraction).long()
        return out

    # -- rendering ------------------------------------------------------------------------------
    def _values(self, factors: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        k = len(self.variant.factors)
        unit = bin_values(factors[:, :k], self.grid, 0.0, 1.0, generator)
        out = {}
        for j, name in enumerate(self.variant.factors):
            lo, hi = RANGES[name]
            out[name] = lo + (hi - lo) * unit[:, j]
        return out

    def coverage(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Anti-aliased disc coverage [n, 1, H, W] for centres x, y [n] (y upward) and this variant's size.

        The share of the S x S sub-pixel centres of each pixel inside the disc,
        counted row by row: on sub-row q the disc covers the sub-columns m with
        |(m + 0.5) / (W S) - x| <= w_q, an interval [lo_q, hi_q], and pixel c
        holds |[lo_q, hi_q] & [c S, c S + S - 1]| of them.  The same numbers as
        drawing S times larger and averaging S x S blocks, at 1/S of the work.
        """
        s, size = self.supersample, self.image_size
        fine = size * s
        r2 = (self.variant.size / 2) ** 2
        v = 1.0 - (torch.arange(fine, device=x.device, dtype=torch.float32) + 0.5) / fine  # sub-row centres, y up
        half2 = r2 - (v.view(1, -1) - y.view(-1, 1)).square()  # [n, fine]: squared half-chord
        w = half2.clamp_min(0.0).sqrt()
        lo = torch.ceil((x.view(-1, 1) - w) * fine - 0.5)
        hi = torch.floor((x.view(-1, 1) + w) * fine - 0.5)
        hi = torch.where(half2 >= 0, hi, lo - 1.0)  # rows that miss the disc: an empty interval
        start = torch.arange(size, device=x.device, dtype=torch.float32).view(1, 1, -1) * s
        count = (torch.minimum(hi.unsqueeze(2), start + (s - 1)) - torch.maximum(lo.unsqueeze(2), start) + 1.0).clamp_(
            0.0, s
        )
        return count.view(-1, size, s, size).sum(2).unsqueeze(1) / (s * s)

    def render(self, factors: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_factors(factors)
        v = self._values(factors, generator)
        n, device = factors.shape[0], factors.device
        x = v.get("x", torch.full((n,), self.variant.x, device=device))
        y = v.get("y", torch.full((n,), self.variant.y, device=device))
        if "hue" in v:
            one = torch.ones_like(v["hue"])
            rgb = hsv_to_rgb(torch.stack([v["hue"], one, one], dim=1))
        elif "red" in v:
            rgb = torch.stack([v["red"], v["green"], torch.ones_like(v["red"])], dim=1)
        else:
            rgb = torch.ones(n, 3, device=device)
        if self.blank_fraction > 0:
            rgb = rgb * factors[:, -1:].float()
        return self.coverage(x, y) * rgb.view(n, 3, 1, 1)

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        """Cell centres of the continuous factors (x, y in frame units, y up; hue; red, green), then presence."""
        self.check_factors(factors)
        cols = [bin_centres(factors[:, j], self.grid, *RANGES[name]) for j, name in enumerate(self.variant.factors)]
        if self.blank_fraction > 0:
            cols.append(factors[:, -1].float())
        return torch.stack(cols, dim=1)
