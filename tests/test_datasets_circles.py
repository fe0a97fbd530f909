"""Circles: geometry and anti-aliasing, continuous factors on a grid, hold-out splits, blank images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbvae import keyed
from sbvae.datasets import DataError, load

SIZES = {"circles-xy": 0.2, "circles-xh": 0.3, "circles-rg": 0.5, "circles-xyh-small": 0.1, "circles-xyh-tiny": 0.075}


def coverage(images):
    return images.amax(dim=1)  # [n, H, W]: the colour is constant, so the max channel scales with coverage


@pytest.mark.parametrize("name", list(SIZES))
def test_area_is_the_disc_of_the_stated_diameter(name):
    data = load(name)
    g = torch.Generator().manual_seed(0)
    factors = data.sample_factors(32, g)
    images = data.render(factors, g)
    # white / full-value colours: one channel is exactly 1 inside, so the max channel is the coverage
    area = coverage(images).sum((1, 2))
    expected = math.pi * (SIZES[name] * 64 / 2) ** 2
    assert area.mean().item() == pytest.approx(expected, rel=0.01)
    assert ((area - expected).abs() / expected).max() < 0.03


def test_a_tiny_circle_covers_about_18_pixels_with_anti_aliased_edges():
    data = load("circles-xyh-tiny")
    factors = data.sample_factors(64, torch.Generator().manual_seed(1))
    cov = coverage(data.render(factors))
    assert cov.sum((1, 2)).mean().item() == pytest.approx(18.1, abs=0.3)
    partial = ((cov > 0) & (cov < 1)).sum((1, 2)).float()
    assert partial.min() >= 4  # edges are grey, not binary
    levels = (cov * 25).round()
    assert torch.allclose(cov * 25, levels, atol=1e-4)  # coverage counts 5 x 5 sub-pixels


def test_supersampled_coverage_equals_drawing_large_and_averaging():
    data = load("circles-xyh-small", image_size=32)
    x, y = torch.rand(50) * 0.6 + 0.2, torch.rand(50) * 0.6 + 0.2
    s, n = 5, 32 * 5
    sub = (torch.arange(n) + 0.5) / n
    inside = (sub.view(1, 1, -1) - x.view(-1, 1, 1)) ** 2 + ((1 - sub).view(1, -1, 1) - y.view(-1, 1, 1)) ** 2 <= (
        0.05
    ) ** 2
    ref = F.avg_pool2d(inside.float().unsqueeze(1), s)
    assert (data.coverage(x, y) - ref).abs().max() <= 1 / 25 + 1e-6
    assert (data.coverage(x, y) - ref).abs().gt(1e-6).float().mean() < 1e-3


def test_a_sub_pixel_centre_on_the_circle_counts_as_inside():
    # Dyadic centre and radius: the circle passes exactly through four pixel centres, whose rows touch
    # the disc in a single point; the disc is closed, so they count (one sub-pixel per pixel here).
    data = load("circles-rg", image_size=8, supersample=1)  # diameter 0.5: radius 2 px
    x, y = torch.tensor([0.5625]), torch.tensor([0.6875])
    c = (torch.arange(8) + 0.5) / 8
    inside = (c.view(1, -1) - x) ** 2 + ((1 - c).view(-1, 1) - y) ** 2 <= 0.25**2
    cov = data.coverage(x, y)[0, 0]
    assert torch.equal(cov, inside.float())
    assert cov[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # the top row touches the circle at x only


def test_position_y_up_and_cell_centres():
    data = load("circles-xy", grid=8)
    factors = torch.tensor([[0, 0], [7, 7], [3, 0], [0, 5]])
    values = data.factor_values(factors)
    assert values[:, 0].tolist() == pytest.approx([0.2375, 0.7625, 0.4625, 0.2375])
    cov = coverage(data.render(factors))
    area = cov.sum((1, 2))
    cx = (cov.sum(1) * torch.arange(64)).sum(1) / area
    cy = (cov.sum(2) * torch.arange(64)).sum(1) / area
    assert (cx - (values[:, 0] * 64 - 0.5)).abs().max() < 0.05
    assert (cy - ((1 - values[:, 1]) * 64 - 0.5)).abs().max() < 0.05  # y grows upward


def test_jitter_stays_inside_the_cell():
    data = load("circles-xy", grid=4)
    factors = torch.tensor([[1, 2]]).repeat(200, 1)
    cov = coverage(data.render(factors, torch.Generator().manual_seed(0)))
    area = cov.sum((1, 2))
    x = ((cov.sum(1) * torch.arange(64)).sum(1) / area + 0.5) / 64
    assert x.min() >= 0.35 - 1e-3 and x.max() <= 0.5 + 1e-3 and x.std() > 0.02  # cell 1 of 4 over [0.2, 0.8]


def test_colours_of_each_variant():
    xh = load("circles-xh", grid=4)
    img = xh.render(torch.tensor([[0, 0], [3, 3]]))
    colour = img[:, :, 31, :].amax(dim=2)  # y = 0.5: the circle crosses the middle rows
    assert colour.amax(1).tolist() == [1.0, 1.0] and colour.amin(1).tolist() == [0.0, 0.0]  # V = 1, S = 1
    rg = load("circles-rg", grid=4)
    pixel = rg.render(torch.tensor([[0, 3]]))[0, :, 32, 32]
    assert pixel.tolist() == pytest.approx([0.45, 0.75, 1.0], abs=1e-6)  # cell centres of 4 over [0.4, 0.8]
    xy = load("circles-xy")
    assert xy.render(torch.tensor([[10, 10]]))[0].amax((1, 2)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("holdout, lo, hi, cells", [("center", 0.35, 0.65, (8, 24)), ("corner", 0.2, 0.5, (0, 16))])
def test_holdout_splits(holdout, lo, hi, cells):
    train = load("circles-xy", holdout=holdout, image_size=32)
    held = load("circles-xy", holdout=holdout, split="heldout", image_size=32)
    assert train.hole == (0, 1, *cells) and all(type(k) is int for k in train.hole)  # whole cells, usable as indices
    g = torch.Generator().manual_seed(0)
    f_train = train.sample_factors(20000, g)
    v = train.factor_values(f_train)
    in_hole = ((v >= lo) & (v <= hi)).all(1)
    assert not bool(in_hole.any())  # never leaks
    assert bool(train.in_split(f_train).all()) and not bool(held.in_split(f_train).any())
    cells = torch.unique(f_train[:, 0] * 32 + f_train[:, 1])
    assert len(cells) == 32 * 32 * 3 // 4  # every other cell is reached
    f_held = held.sample_factors(4000, g)
    assert bool(held.in_split(f_held).all())
    assert len(torch.unique(f_held[:, 0] * 32 + f_held[:, 1])) == 256
    # rendered with jitter, the held-out circles' centres lie in the hole
    cov = coverage(held.render(f_held[:500], g))
    area = cov.sum((1, 2))
    x = ((cov.sum(1) * torch.arange(32)).sum(1) / area + 0.5) / 32
    y = 1 - ((cov.sum(2) * torch.arange(32)).sum(1) / area + 0.5) / 32
    for c in (x, y):
        assert c.min() >= lo - 2e-3 and c.max() <= hi + 2e-3


def test_holdout_on_other_factor_pairs():
    data = load("circles-xyh-small", holdout="center", holdout_factors=("x", "hue"), split="heldout", image_size=16)
    f = data.sample_factors(1000, torch.Generator().manual_seed(0))
    v = data.factor_values(f)
    assert bool(((v[:, [0, 2]] >= 0.35) & (v[:, [0, 2]] <= 0.65)).all())
    assert v[:, 1].min() < 0.3 and v[:, 1].max() > 0.7  # y is free
    default = load("circles-xyh-small", holdout="center", split="heldout", image_size=16)  # the first two: x, y
    v = default.factor_values(default.sample_factors(1000, torch.Generator().manual_seed(0)))
    assert bool(((v[:, :2] >= 0.35) & (v[:, :2] <= 0.65)).all()) and v[:, 2].min() < 0.3
    smallest = load("circles-xy", image_size=8, grid=2)  # the smallest image and grid the options allow
    assert smallest.render(torch.tensor([[0, 1]])).shape == (1, 3, 8, 8)
    rg = load("circles-rg", holdout="corner", split="heldout", image_size=16)
    v = rg.factor_values(rg.sample_factors(500, torch.Generator().manual_seed(0)))
    assert bool(((v >= 0.4) & (v <= 0.6)).all())  # half of [0.4, 0.8] from the low end


def test_blank_fraction_adds_a_presence_factor():
    data = load("circles-xh", blank_fraction=0.5, image_size=16)
    assert data.factor_names == ("x", "hue", "presence") and data.factor_sizes[-1] == 2
    g = torch.Generator().manual_seed(0)
    f = data.sample_factors(4000, g)
    images = data.render(f, g)
    blank = images.amax(dim=(1, 2, 3)) == 0
    assert blank.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(blank, f[:, -1] == 0)
    few = load("circles-xh", blank_fraction=0.2, image_size=16)
    assert (few.sample_factors(4000, g)[:, -1] == 0).float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert load("circles-xh").factor_names == ("x", "hue")
    # The presence factor is the last value column; a present circle is drawn exactly as without blanks.
    values = data.factor_values(f[:8])
    assert values.shape == (8, 3) and values[:, 2].tolist() == f[:8, 2].float().tolist()
    plain = load("circles-xh", image_size=16)
    shown = f[f[:, 2] == 1][:8]
    torch.testing.assert_close(
        data.render(shown, torch.Generator().manual_seed(5)),
        plain.render(shown[:, :2], torch.Generator().manual_seed(5)),
        rtol=0,
        atol=0,
    )


class Draws(keyed.KeyedRandom):
    """A generator that hands out the given uniforms in order: boundary draws a real stream almost never makes."""

    def __init__(self, *draws):
        self.draws, self.device = list(draws), torch.device("cpu")

    def rand(self, shape, dtype=torch.float32):
        return torch.tensor(self.draws.pop(0), dtype=dtype).expand(shape).clone()


def test_blank_exactly_when_the_draw_is_below_blank_fraction():
    # P(u < b) = b for u uniform on [0, 1): a draw equal to b shows the circle, one 2^-40 below it does not,
    # so the coin is compared in double precision.
    data = load("circles-xh", blank_fraction=0.5, image_size=16)
    factors = data.sample_factors(
        3, Draws([[0.0, 0.0, 0.0], [0.999, 0.5, 0.2], [0.5, 0.05, 0.7]], [0.5, 0.5 - 2**-40, 0.75])
    )
    assert factors.tolist() == [[0, 0, 1], [31, 16, 0], [16, 1, 1]]


@pytest.mark.parametrize(
    "options", [{"holdout": "corner"}, {"holdout": "center", "split": "heldout"}, {"blank_fraction": 0.3}]
)
def test_hold_out_and_blank_draws_follow_the_generator(options):
    data = load("circles-xy", image_size=16, **options)
    draw = lambda seed: data.sample_factors(200, torch.Generator().manual_seed(seed))
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"holdout": "middle"}, "^circles-xy: option holdout must be one of None, 'center', 'corner', got 'middle'"),
        (
            {"holdout": "center", "split": "test"},
            "^circles-xy: option split must be one of 'train', 'heldout', got 'test'",
        ),
        ({"holdout": "center", "grid": 30}, "multiple of 4"),
        ({"split": "heldout"}, "need holdout"),
        ({"holdout": "center", "holdout_factors": ("x", "red")}, "holdout_factors"),
        ({"holdout": "center", "holdout_factors": ("x", "x")}, "two different factors"),
        ({"holdout": "center", "holdout_factors": ("x", "y", "x")}, "two different factors"),
        ({"blank_fraction": 1.0}, r"blank_fraction must be a number in \[0, 1\)"),
        ({"blank_fraction": "half"}, r"blank_fraction must be a number in \[0, 1\), got 'half'"),
        ({"grid": 1}, "^circles-xy: option grid must be an integer >= 2, got 1"),
        ({"grid": 16.0}, "^circles-xy: option grid must be an integer >= 2, got 16.0"),
        ({"image_size": True}, "option image_size must be an integer >= 8, got True"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(DataError, match=message):
        load("circles-xy", **options)
