"""dSprites geometry, colored sprites, and the official npz format (reader, writer, checks)."""

from __future__ import annotations

import colorsys
import math
import os
import warnings

import numpy as np
import pytest
import torch

from sbvae.datasets import DataError, load, sprites
from sbvae.datasets.common import data_dir, hsv_to_rgb
from sbvae.datasets.npz import check_npz, metadata_dict, write_dsprites_npz
from sbvae.datasets.sprites import DSPRITES_FILE, render_dsprites_indices

OFFICIAL = data_dir() / DSPRITES_FILE  # looked up before the fixture below hides the user's data dir


@pytest.fixture(autouse=True)
def _empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBVAE_DATA", str(tmp_path / "data"))


@pytest.fixture
def fresh_atlas():
    """The shape bitmaps rebuilt for this test: the geometry checked is the code's, not a cached copy's."""
    sprites._ATLASES.clear()


def grid(**fixed):
    """All combinations of the given dSprites class lists (shape, scale, orientation, posX, posY)."""
    names = ["shape", "scale", "orientation", "posX", "posY"]
    lists = [torch.as_tensor(fixed.get(n, [0])) for n in names]
    return torch.cartesian_prod(*lists).view(-1, 5)


def masks(factors, size=64):
    return render_dsprites_indices(factors, size)[:, 0]


def centroids(m):
    h, w = m.shape[-2:]
    area = m.sum((1, 2))
    cy = (m.sum(2) * torch.arange(h)).sum(1) / area
    cx = (m.sum(1) * torch.arange(w)).sum(1) / area
    return cx, cy, area


# ---- geometry --------------------------------------------------------------------------------
def test_mean_area_follows_the_geometry_and_grows_with_scale_squared(fresh_atlas):
    expected = {0: (0.3 * 64) ** 2, 1: math.pi * 0.2 * 0.1125 * 64**2}
    for shape, area1 in expected.items():
        for scale in range(6):
            s = 0.5 + 0.1 * scale
            m = masks(grid(shape=[shape], scale=[scale], posX=range(32), posY=[3, 17]))
            assert m.sum((1, 2)).mean().item() == pytest.approx(area1 * s * s, rel=0.03)
    hearts = [masks(grid(shape=[2], scale=[k], posX=range(32), posY=[9])).sum((1, 2)).mean().item() for k in (0, 5)]
    assert hearts[0] / hearts[1] == pytest.approx(0.25, rel=0.04)


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_centroid_moves_linearly_with_position(shape, fresh_atlas):
    m = masks(grid(shape=[shape], scale=[3], posX=range(32), posY=[7]))
    cx, cy, _ = centroids(m)
    expected = (0.25 + 0.5 * torch.arange(32) / 31) * 64 - 0.5  # pixel-index coordinates
    assert (cx - expected).abs().max() < 0.5
    assert cy.std() < 0.1  # posY fixed: the row centroid stays put (up to pixel discretisation)
    m = masks(grid(shape=[shape], scale=[3], posX=[20], posY=range(32)))
    cx, cy, _ = centroids(m)
    offset = cy - expected  # the heart's centroid sits below its centre; the offset must be constant
    assert offset.std() < 0.2 and cx.std() < 0.1
    if shape < 2:
        assert offset.abs().max() < 0.5


def test_no_sprite_touches_the_border(fresh_atlas):
    m = masks(grid(shape=[0, 1, 2], scale=[5], orientation=range(40), posX=[0, 31], posY=[0, 31]))
    assert m.shape[0] == 3 * 40 * 4
    border = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], dim=1)
    assert border.sum() == 0
    assert bool((m.sum((1, 2)) > 0).all())


def test_orientation_39_is_orientation_0(fresh_atlas):
    base = grid(shape=[0, 1, 2], scale=range(6), posX=[0, 13, 31], posY=[0, 5, 31])
    last = base.clone()
    last[:, 2] = 39
    assert torch.equal(masks(base), masks(last))
    # At 15 px the unit square's edges pass through pixel centres: a turn by float32(2 pi), whose sine is
    # not 0, would flip some of them.
    assert torch.equal(masks(base, 15), masks(last, 15))


def test_rotation_is_counter_clockwise_as_displayed_and_heart_lobes_point_up(fresh_atlas):
    m = masks(grid(shape=[1], scale=[5], orientation=[5], posX=[15], posY=[15]))[0]  # ellipse at 46 degrees
    ys, xs = torch.nonzero(m, as_tuple=True)
    cov = ((xs - xs.float().mean()) * (ys - ys.float().mean())).float().mean()
    assert cov < 0  # the right end of the major axis went up (y grows downward in the image)
    heart = masks(grid(shape=[2], scale=[5], posX=[15], posY=[15]))[0].bool()
    rows = torch.nonzero(heart.any(1)).view(-1)
    top, bottom = heart[rows[0] + 1], heart[rows[-1]]
    runs = int((top[1:] & ~top[:-1]).sum() + top[0])
    assert runs == 2  # two lobes near the top, separated by the dip
    assert bottom.sum() <= 2  # a pointed tip at the bottom


def test_atlas_rasteriser_matches_the_inside_tests(fresh_atlas):
    g = torch.Generator().manual_seed(0)
    factors = torch.stack([torch.randint(0, s, (300,), generator=g) for s in (2, 6, 40, 32, 32)], 1)
    shape, scale, orient, px, py = factors.unbind(1)
    s = (0.5 + 0.1 * scale.double()).view(-1, 1, 1)
    a = ((orient % 39).double() * 2 * math.pi / 39).view(-1, 1, 1)
    c = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    dx = c.view(1, 1, -1) - (0.25 + 0.5 * px.double() / 31).view(-1, 1, 1)
    dy = c.view(1, -1, 1) - (0.25 + 0.5 * py.double() / 31).view(-1, 1, 1)
    lx, ly = (a.cos() * dx - a.sin() * dy) / s, (a.sin() * dx + a.cos() * dy) / s
    square = torch.maximum(lx.abs(), ly.abs()) <= 0.15
    ellipse = (lx / 0.2) ** 2 + (ly / 0.1125) ** 2 <= 1
    exact = torch.where(shape.view(-1, 1, 1) == 0, square, ellipse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say on every batch (grid_sample warns about unset options)
        rendered = masks(factors).bool()
    assert (rendered != exact).sum(dim=(1, 2)).float().mean() < 0.5  # < 0.5 px per image
    # The square's edges lie on texel edges, so its bitmap is exact: a sampling shifted by a fraction of
    # a texel shows only there.
    assert torch.equal(rendered[shape == 0], square[shape == 0])


def test_heart_matches_the_parametric_outline(fresh_atlas):
    # DATASETS.md's heart, x = 0.15 s sin^3 t, y = s (-0.0104 (13 cos t - 5 cos 2t - 2 cos 3t - cos 4t) - 0.0219),
    # tested for inside with matplotlib's polygon test at every pixel centre, in local coordinates.
    from matplotlib.path import Path

    t = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    outline = Path(
        np.stack(
            [
                0.15 * np.sin(t) ** 3,
                -0.0104 * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 0.0219,
            ],
            1,
        )
    )
    g = torch.Generator().manual_seed(1)
    factors = torch.stack(
        [torch.full((60,), 2)] + [torch.randint(0, n, (60,), generator=g) for n in (6, 40, 32, 32)], 1
    )
    _, scale, orient, px, py = factors.double().unbind(1)
    c = (np.arange(64) + 0.5) / 64
    mismatched = []
    for k, image in enumerate(masks(factors).bool()):
        s, a = 0.5 + 0.1 * scale[k].item(), (orient[k].item() % 39) * 2 * np.pi / 39
        dx, dy = np.meshgrid(c - 0.25 - 0.5 * px[k].item() / 31, c - 0.25 - 0.5 * py[k].item() / 31)
        local = np.stack([(np.cos(a) * dx - np.sin(a) * dy) / s, (np.sin(a) * dx + np.cos(a) * dy) / s], -1)
        inside = torch.from_numpy(outline.contains_points(local.reshape(-1, 2)).reshape(64, 64))
        mismatched.append(int((image != inside).sum()))
    assert np.mean(mismatched) < 0.5 and max(mismatched) <= 3  # texel rounding on the outline only


def test_heart_outline_points():
    # t = 2 pi k / 2000 (no repeated end point): k = 0 the dip between the lobes, 500 the right extreme,
    # 1000 the tip, 1500 the left extreme; y = -0.0104 (13 cos t - 5 cos 2t - 2 cos 3t - cos 4t) - 0.0219
    points = sprites.heart_outline()
    assert points.shape == (2000, 2)
    expected = [
        [0.0, -0.0104 * 5 - 0.0219],
        [0.15, -0.0104 * 4 - 0.0219],
        [0.0, 0.0104 * 17 - 0.0219],
        [-0.15, -0.0104 * 4 - 0.0219],
    ]
    np.testing.assert_allclose(points[[0, 500, 1000, 1500]], expected, rtol=0, atol=1e-12)


def test_heart_bitmap_is_the_even_odd_fill_of_the_outline_texel_for_texel():
    # Every heart is looked up in one 1000 x 1000 bitmap over [-0.25, 0.25]^2; an edge interpolated a little
    # off moves its boundary by a texel or two, which whole renders at 64 px do not resolve.  Compared with
    # matplotlib's polygon test of the 2000-gon at the texel centres of 20 rows.
    from matplotlib.path import Path

    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    outline = Path(
        np.stack(
            [
                0.15 * np.sin(t) ** 3,
                -0.0104 * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 0.0219,
            ],
            1,
        )
    )
    c = (np.arange(1000) + 0.5) / 2000 - 0.25
    rows = np.arange(3, 1000, 50)
    x, y = np.meshgrid(c, c[rows])
    inside = outline.contains_points(np.stack([x.ravel(), y.ravel()], 1)).reshape(len(rows), 1000)
    tile = sprites._shape_tiles()[2]
    assert 0 < inside.sum() and torch.equal(tile[rows], torch.from_numpy(inside))


def test_image_size_renders_natively(fresh_atlas):
    f = grid(shape=[0], scale=[5], posX=[15], posY=[15])
    values = [torch.tensor([v]) for v in (0, 1.0, 0.0, 15 / 31, 15 / 31)]
    assert torch.equal(sprites.sprite_masks(*values)[:, 0], masks(f))  # 64 px unless told otherwise
    small = masks(f, 32)
    assert set(small.unique().tolist()) <= {0.0, 1.0}
    assert small.sum().item() == pytest.approx(masks(f, 64).sum().item() / 4, rel=0.15)


def test_double_precision_scale_and_position_draw_what_their_float32_roundings_draw(fresh_atlas):
    # The renderer works in float32 whatever the values' dtype.  Each sprite here has an edge pixel within a
    # float32 rounding of a texel edge, where carrying on in double precision would flip it: a heart (found
    # among random float64 sprites), and a unit square, upright then turned a quarter, whose right edge
    # passes a hair from a pixel centre in x, then in y (found by scanning positions 1e-9 apart).
    shape = torch.tensor([2, 0, 0])
    angle = torch.tensor([2.6293481812540143, 0.0, math.pi / 2], dtype=torch.float64)
    values = torch.tensor(
        [
            [0.9338499564116842, 0.12132832080356082, 0.050402876956338494],
            [1.0, 0.465624965, 0.5],
            [1.0, 0.5, 0.465625075],
        ],
        dtype=torch.float64,
    )
    double = sprites.sprite_masks(shape, values[:, 0], angle, values[:, 1], values[:, 2])
    rounded = values.float()
    single = sprites.sprite_masks(shape, rounded[:, 0], angle, rounded[:, 1], rounded[:, 2])
    assert torch.equal(double, single) and bool((double.sum((1, 2, 3)) > 0).all())


# ---- colored sprites --------------------------------------------------------------------------
def test_hsv_to_rgb_matches_colorsys():
    hsv = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    ours = hsv_to_rgb(hsv)
    ref = torch.tensor([colorsys.hsv_to_rgb(*row) for row in hsv.tolist()])
    assert (ours - ref).abs().max() < 1e-5


def test_colored_sprites_colour_lies_in_the_hsv_box_and_its_bins():
    data = load("colored-sprites", image_size=32)
    assert data.factor_names[-3:] == ("hue", "saturation", "value") and data.factor_sizes[-3:] == (10, 10, 10)
    g = torch.Generator().manual_seed(0)
    factors = data.sample_factors(200, g)
    images = data.render(factors, g)
    mask = data.sprites.render(factors[:, :5])
    assert bool((images * (1 - mask) == 0).all())  # black outside the sprite
    rgb = images.amax(dim=(2, 3))  # the sprite colour (pixels are either black or that colour)
    hsv = torch.tensor([colorsys.rgb_to_hsv(*c) for c in rgb.tolist()])
    edges = factors[:, 5:].float() / 10
    lo = torch.tensor([0.0, 0.3, 0.3]) + torch.tensor([1.0, 0.4, 0.4]) * edges
    hi = lo + torch.tensor([0.1, 0.04, 0.04])
    eps = 1e-4
    assert bool(((hsv >= lo - eps) & (hsv <= hi + eps)).all())
    assert hsv[:, 1:].min() >= 0.3 - eps and hsv[:, 1:].max() <= 0.7 + eps


def test_colored_sprites_factor_values_are_bin_centres():
    data = load("colored-sprites", image_size=16, color_bins=4)
    f = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 3]])
    v = data.factor_values(f)[0]
    assert v[-3:].tolist() == pytest.approx([0.125, 0.3 + 0.4 * 0.375, 0.3 + 0.4 * 0.875])
    assert v[:5].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])


# ---- the official npz format ------------------------------------------------------------------
SUBSET = {"scale": [0, 5], "orientation": [0, 10, 39], "posX": [0, 31], "posY": [0, 16, 31]}


@pytest.fixture
def small_npz(tmp_path):
    return write_dsprites_npz(tmp_path / "out" / DSPRITES_FILE, subset=SUBSET, chunk=50)


def test_writer_produces_the_official_keys_order_and_dtypes(small_npz):
    with np.load(small_npz, allow_pickle=False) as f:
        assert {"imgs", "latents_values", "latents_classes", "metadata"} == set(f.files)
        imgs, values, classes = f["imgs"], f["latents_values"], f["latents_classes"]
    n = 3 * 2 * 3 * 2 * 3
    assert imgs.shape == (n, 64, 64) and imgs.dtype == np.uint8 and set(np.unique(imgs)) == {0, 1}
    assert values.shape == classes.shape == (n, 6) and values.dtype == np.float64 and classes.dtype == np.int64
    assert (classes[:, 0] == 0).all() and (values[:, 0] == 1.0).all()
    assert classes[:4, 5].tolist() == [0, 16, 31, 0]  # posY fastest
    assert values[1, 5] == pytest.approx(16 / 31) and values[3, 4] == 1.0
    meta = metadata_dict(small_npz)
    assert meta["latents_sizes"] == [1, 3, 2, 3, 2, 3] and meta["latents_names"][-1] == "posY"
    assert np.allclose(meta["latents_possible_values"]["orientation"], [0, 10 * 2 * np.pi / 39, 2 * np.pi])
    # images are the renderer's
    assert np.array_equal(imgs, masks(torch.from_numpy(classes[:, 1:])).numpy().astype(np.uint8))
    assert not list(small_npz.parent.glob("*.partial"))


def test_check_report_and_subset_guard(small_npz):
    report = check_npz(small_npz, scan_images=True, allow_subset=True)
    assert report.ok and any("sub-grid" in line for line in report.lines)
    report = check_npz(small_npz)
    assert not report.ok and "sub-grid" in report.problems[0]


def test_loader_reads_a_written_subset_file(small_npz):
    with pytest.raises(DataError, match="allow_subset=True"):
        load("dsprites", path=str(small_npz))
    data = load("dsprites", path=str(small_npz), allow_subset=True)
    assert data.source == "file" and data.factor_sizes == (3, 2, 3, 2, 3)
    f = torch.cartesian_prod(*[torch.arange(s) for s in data.factor_sizes])
    official = torch.stack(
        [
            f[:, 0],
            torch.tensor([0, 5])[f[:, 1]],
            torch.tensor([0, 10, 39])[f[:, 2]],
            torch.tensor([0, 31])[f[:, 3]],
            torch.tensor([0, 16, 31])[f[:, 4]],
        ],
        1,
    )
    assert torch.equal(data.render(f), render_dsprites_indices(official))
    assert data.factor_values(f)[:, 1].unique().tolist() == pytest.approx([0.5, 1.0])
    small = load("dsprites", path=str(small_npz), allow_subset=True, image_size=16)
    assert torch.allclose(small.render(f), torch.nn.functional.avg_pool2d(data.render(f), 4))
    with pytest.raises(DataError, match="divide 64"):
        load("dsprites", path=str(small_npz), allow_subset=True, image_size=48)
    colored = load("colored-sprites", path=str(small_npz), allow_subset=True)
    assert colored.factor_sizes == (3, 2, 3, 2, 3, 10, 10, 10) and colored.source == "file"
    # Orientation index 2 of this file is 2 pi: the same image as its index 0.
    canonical = f.clone()
    canonical[:, 2] = torch.where(f[:, 2] == 2, 0, f[:, 2])
    assert torch.equal(data.canonical_factors(f), canonical)
    # colored-sprites hands every file option to its dSprites.
    with pytest.raises(DataError, match="allow_subset=True"):
        load("colored-sprites", path=str(small_npz))
    assert load("dsprites", data_dir=str(small_npz.parent), allow_subset=True).source == "file"
    assert load("colored-sprites", data_dir=str(small_npz.parent), allow_subset=True).source == "file"
    assert load("colored-sprites", data_dir=str(small_npz.parent), source="procedural").source == "procedural"


def test_loader_reads_a_hand_made_npz_with_the_official_keys(tmp_path):
    # a tiny grid in the official layout, written with plain np.savez (not by sbvae)
    classes = np.stack(np.meshgrid([0], [0, 1, 2], [0, 1], [0], [0, 1], [0, 1], indexing="ij"), -1).reshape(-1, 6)
    tables = [
        np.array([1.0]),
        np.array([1.0, 2, 3]),
        np.linspace(0.5, 1, 6),
        np.linspace(0, 2 * np.pi, 40),
        np.linspace(0, 1, 32),
        np.linspace(0, 1, 32),
    ]
    values = np.stack([tables[k][classes[:, k]] for k in range(6)], 1)
    imgs = (np.random.default_rng(0).random((len(classes), 64, 64)) < 0.3).astype(np.uint8)
    path = tmp_path / "data" / DSPRITES_FILE
    path.parent.mkdir()
    np.savez(
        path,
        imgs=imgs,
        latents_values=values,
        latents_classes=classes.astype(np.int64),
        metadata=np.array({"pickled": True}, dtype=object),
    )  # a pickle that must never be read
    data = load("dsprites", allow_subset=True)  # found in the data directory (source auto)
    assert data.source == "file" and data.factor_sizes == (3, 2, 1, 2, 2)
    f = torch.tensor([[0, 0, 0, 0, 0], [2, 1, 0, 1, 1], [1, 0, 0, 1, 0]])
    index = (f * torch.tensor([8, 4, 4, 2, 1])).sum(1)
    assert torch.equal(data.render(f)[:, 0], torch.from_numpy(imgs[index.numpy()]).float())


def test_auto_falls_back_to_the_renderer_and_file_source_needs_the_file(tmp_path):
    assert load("dsprites").source == "procedural"
    with pytest.raises(DataError) as e:
        load("dsprites", source="file")
    msg = str(e.value)
    assert DSPRITES_FILE in msg and "github.com/deepmind/dsprites-dataset" in msg and "path=" in msg
    with pytest.raises(DataError, match="does not exist"):
        load("dsprites", path=str(tmp_path / "nope.npz"))  # an explicit path is never ignored


def test_truncated_wrong_keyed_and_wrong_shaped_files_are_refused(small_npz, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(small_npz.read_bytes()[: small_npz.stat().st_size // 2])
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, images=np.zeros((2, 64, 64), np.uint8))
    wrong_shape = tmp_path / "shape.npz"
    np.savez(
        wrong_shape,
        imgs=np.zeros((2, 32, 32), np.uint8),
        latents_values=np.zeros((2, 6)),
        latents_classes=np.zeros((2, 6), np.int64),
    )
    for path, why in [(truncated, "truncated"), (wrong_keys, "lacks the key"), (wrong_shape, "imgs has shape")]:
        with pytest.raises(DataError, match=why) as e:
            load("dsprites", path=str(path))
        assert str(path) in str(e.value) and "dsprites-dataset" in str(e.value) and "path=" in str(e.value)
        assert f"or put it in the data directory ({tmp_path / 'data'})" in str(e.value)


def test_option_errors_name_the_dataset_class():
    # a message names the dataset it came from: the class's registry name, else dsprites
    class Renamed(sprites.DSprites):
        name = "my-sprites"

    class Unnamed(sprites.DSprites):
        name = ""

    with pytest.raises(DataError, match="^my-sprites: option image_size must be an integer >= 8, got 4"):
        Renamed(image_size=4)
    with pytest.raises(DataError, match="^dsprites: option image_size must be an integer >= 8, got 4"):
        Unnamed(image_size=4)


@pytest.mark.skipif(not OFFICIAL.is_file(), reason=f"the official {DSPRITES_FILE} is not in {OFFICIAL.parent}")
def test_renderer_against_the_official_file():
    official = load("dsprites", path=str(OFFICIAL), source="file")
    ours = load("dsprites", source="procedural")
    g = torch.Generator().manual_seed(0)
    factors = official.sample_factors(2000, g)
    mismatch = (official.render(factors) != ours.render(factors)).sum(dim=(1, 2, 3)).float()
    per_shape = {n: mismatch[factors[:, 0] == k].mean().item() for k, n in enumerate(("square", "ellipse", "heart"))}
    print(f"mismatched pixels per image: mean {mismatch.mean():.2f}, max {mismatch.max():.0f}, by shape {per_shape}")
    assert mismatch.mean() < 8, per_shape


def test_full_size_constants_are_the_official_ones():
    from sbvae.datasets.npz import OFFICIAL_N
    from sbvae.datasets.sprites import LATENT_SIZES

    assert OFFICIAL_N == 737280 and LATENT_SIZES == (1, 3, 6, 40, 32, 32)
    assert [int(np.prod(LATENT_SIZES[k + 1 :])) for k in range(6)] == [737280, 245760, 40960, 1024, 32, 1]
    assert os.path.basename(DSPRITES_FILE) == "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
