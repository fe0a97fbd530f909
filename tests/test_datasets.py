"""sbvae.datasets: registry, errors, the interface of every dataset, determinism, devices."""

from __future__ import annotations

import pickle

import pytest
import torch

import sbvae.datasets as D
from sbvae.datasets import DataError, GroundTruthData, available, load

PROCEDURAL = [
    "dsprites",
    "colored-sprites",
    "circles-xy",
    "circles-xh",
    "circles-rg",
    "circles-xyh-small",
    "circles-xyh-tiny",
]
CHANNELS = {"dsprites": 1, "colored-sprites": 3}


@pytest.fixture(autouse=True)
def _empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBVAE_DATA", str(tmp_path / "data"))


def test_available_lists_every_dataset_with_a_description():
    names = available()
    assert set(PROCEDURAL + ["shapes3d", "chairs"]) == set(names)
    assert all(isinstance(d, str) and d for d in names.values())


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*dsprites.*circles-xy.*shapes3d"):
        load("mnist")


def test_unknown_option_is_one_sentence_naming_the_options():
    with pytest.raises(DataError, match=r"has no option 'colour_bins'; its options are: image_size, color_bins") as e:
        load("colored-sprites", colour_bins=4)
    assert str(e.value).count(".") <= 2 and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("dsprites", {"image_size": 4}, "^dsprites: option image_size must be an integer >= 8, got 4"),
        (
            "dsprites",
            {"source": "web"},
            "^dsprites: option source must be one of 'auto', 'procedural', 'file', got 'web'",
        ),
        (
            "dsprites",
            {"source": "file"},
            r"does not exist.*deepmind/dsprites-dataset.*path=\.\.\. or put it in the data directory \(/",
        ),
        ("dsprites", {"path": "/nowhere/d.npz"}, r"/nowhere/d.npz does not exist; get the official .*path=\.\.\.\.$"),
        (
            "dsprites",
            {"source": "file", "image_size": 0},
            "^dsprites: option image_size must be an integer >= 1, got 0",
        ),
        ("dsprites", {"source": "file", "image_size": 24}, "^dsprites stores 64x64 images .* got 24"),
        ("colored-sprites", {"color_bins": 0}, "^colored-sprites: option color_bins must be an integer >= 1, got 0"),
        ("circles-xy", {"image_size": 7}, "^circles-xy: option image_size must be an integer >= 8, got 7"),
        ("circles-xy", {"supersample": 0}, "^circles-xy: option supersample must be an integer >= 1, got 0"),
    ],
)
def test_bad_option_values(name, options, message):
    with pytest.raises(DataError, match=message):
        load(name, **options)


def test_data_dir_option_env_and_default(tmp_path, monkeypatch):
    assert D.data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("SBVAE_DATA", str(tmp_path / "x"))
    assert D.data_dir() == tmp_path / "x"
    monkeypatch.delenv("SBVAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert D.data_dir() == tmp_path / "cache" / "sbvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.data_dir() == tmp_path / "home" / ".cache" / "sbvae"


@pytest.mark.parametrize("name", PROCEDURAL)
@pytest.mark.parametrize("size", [16, 32])
def test_interface_shapes_dtypes_range(name, size):
    data = load(name, image_size=size)
    assert isinstance(data, GroundTruthData) and data.name == name
    assert data.num_factors == len(data.factor_names) == len(data.factor_sizes)
    assert data.channels == CHANNELS.get(name, 3)
    assert data.observation_shape == (data.channels, size, size)
    g = torch.Generator().manual_seed(0)
    factors = data.sample_factors(12, g)
    assert factors.dtype == torch.long and factors.shape == (12, data.num_factors)
    assert bool((factors >= 0).all()) and bool((factors < torch.tensor(data.factor_sizes)).all())
    for gen in (g, None):
        images = data.render(factors, gen)
        assert images.dtype == torch.float32 and images.shape == (12, data.channels, size, size)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        assert float(images.amax(dim=(1, 2, 3)).min()) > 0.0  # something is drawn in every image
    values = data.factor_values(factors)
    assert values.shape == (12, data.num_factors) and values.is_floating_point()


@pytest.mark.parametrize("name", ["dsprites", "colored-sprites", "circles-xyh-tiny"])
def test_check_factors_refuses_bad_indices(name):
    data = load(name, image_size=16)
    good = data.sample_factors(3, torch.Generator().manual_seed(0))
    bad = good.clone()
    bad[0, -1] = data.factor_sizes[-1]
    with pytest.raises(ValueError, match="out of range"):
        data.render(bad)
    with pytest.raises(ValueError, match="shape"):
        data.render(good[:, :-1])
    with pytest.raises(ValueError, match="integer"):
        data.render(good.float())
    with pytest.raises(ValueError, match="integer"):
        data.render(good.bool())
    neg = good.clone()
    neg[1, 0] = -1
    with pytest.raises(ValueError, match="out of range"):
        data.factor_values(neg)


@pytest.mark.parametrize("name", ["colored-sprites", "circles-xyh-small", "circles-rg"])
def test_same_seed_same_images(name):
    data = load(name, image_size=16)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return data.render(data.sample_factors(16, g), g)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_sample_factors_reaches_every_class():
    data = load("dsprites", image_size=16)
    factors = data.sample_factors(20_000, torch.Generator().manual_seed(0))
    assert factors.min(0).values.tolist() == [0] * 5
    assert factors.max(0).values.tolist() == [s - 1 for s in data.factor_sizes]


class _Grid(GroundTruthData):
    """A bare factor grid: what sample_factors and check_factors do, with no renderer in the way."""

    factor_names, channels = ("a", "b"), 1

    def __init__(self, sizes):
        self.factor_sizes = sizes

    def render(self, factors, generator=None):
        return torch.zeros(factors.shape[0], 1, 8, 8)

    def factor_values(self, factors):
        return factors.float()


def test_sample_factors_reaches_odd_classes_of_a_huge_factor():
    # Single-precision uniforms carry 24 bits: times 2^30 classes they land only on multiples of 64.
    factors = _Grid((2**30, 3)).sample_factors(200, torch.Generator().manual_seed(0))
    assert bool((factors[:, 0] % 2 == 1).any()) and bool((factors[:, 0] % 64 != 0).any())
    assert 0 <= int(factors[:, 0].min()) and int(factors[:, 0].max()) < 2**30


def test_cached_sizes_follow_a_changed_factor_grid():
    # factor_sizes is a plain attribute (file-backed datasets reassign it): a cached copy must not outlive it
    data = _Grid((2, 3))
    data.check_factors(torch.tensor([[1, 2]]))
    data.factor_sizes = (5, 3)
    assert int(data.sample_factors(400, torch.Generator().manual_seed(0))[:, 0].max()) == 4
    data.check_factors(torch.tensor([[4, 2]]))


def test_jitter_comes_from_the_generator_and_none_means_bin_centre():
    data = load("colored-sprites", image_size=16)
    factors = data.sample_factors(8, torch.Generator().manual_seed(0))
    a = data.render(factors, torch.Generator().manual_seed(1))
    b = data.render(factors, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert torch.equal(data.render(factors), data.render(factors))


@pytest.mark.parametrize("name", PROCEDURAL)
def test_renders_on_the_factors_device(name):
    data = load(name, image_size=16)
    factors = data.sample_factors(4, torch.Generator().manual_seed(0))
    assert data.render(factors).device == factors.device
    assert data.factor_values(factors).device == factors.device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PROCEDURAL)
def test_cuda_matches_cpu(name):
    data = load(name)
    factors = data.sample_factors(64, torch.Generator().manual_seed(0))
    cpu = data.render(factors)
    gen = torch.Generator(device="cuda").manual_seed(0)
    gpu = data.render(factors.cuda(), gen)
    assert gpu.device.type == "cuda"
    assert (data.render(factors.cuda()).cpu() - cpu).abs().gt(0.05).float().mean() < 1e-3


def test_a_cpu_generator_may_drive_rendering_of_factors_elsewhere():
    # render draws jitter on the generator's device and moves it to the factors' device
    data = load("circles-xy", image_size=16)
    factors = data.sample_factors(4, torch.Generator().manual_seed(0))
    out = data.render(factors, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 16, 16)


def test_datasets_pickle_without_device_caches():
    data = load("circles-xy", image_size=16, holdout="center")
    g = torch.Generator().manual_seed(0)
    data.render(data.sample_factors(4, g))
    assert any(k.startswith("_cache_") for k in vars(data))  # the sizes and cells are cached ...
    state = data.__getstate__()
    assert state and not any(k.startswith("_cache_") for k in state)  # ... and left out of the pickle
    clone = pickle.loads(pickle.dumps(data))
    factors = clone.sample_factors(4, torch.Generator().manual_seed(0))
    assert torch.equal(clone.render(factors), data.render(factors))
    assert repr(clone) == "Circles(name='circles-xy', image_size=16, channels=3, factors: x=32, y=32)"
    assert load("circles-xh").description == "circle (size 0.3) varying in x and hue, y = 0.5"


def test_without_a_hold_out_every_row_is_in_the_split():
    for data in (load("circles-xy", image_size=16), load("dsprites", image_size=16)):
        rows = data.sample_factors(3, torch.Generator().manual_seed(0))
        split = data.in_split(rows)
        assert split.dtype == torch.bool and split.tolist() == [True, True, True]
    hole = load("circles-xy", image_size=16).in_hole(torch.tensor([[0, 0], [16, 16], [12, 20]]))
    assert hole.dtype == torch.bool and hole.tolist() == [False, False, False]


def test_canonical_rows_merge_dsprites_full_turn_only():
    for name in ("dsprites", "colored-sprites"):
        data = load(name, image_size=16)
        rows = data.sample_factors(400, torch.Generator().manual_seed(0))
        rows[:50, 2] = 39
        expected = rows.clone()
        expected[:, 2] = torch.where(rows[:, 2] == 39, 0, rows[:, 2])
        assert torch.equal(data.canonical_factors(rows), expected), name
    circles = load("circles-xyh-tiny", image_size=16)
    rows = circles.sample_factors(10, torch.Generator().manual_seed(0))
    assert torch.equal(circles.canonical_factors(rows), rows)


def test_bin_values_cut_the_range_into_equal_bins():
    from sbvae.datasets.common import bin_centres, bin_values

    bins = torch.tensor([[0, 3], [1, 2]])
    centres = torch.tensor([[0.275, 0.725], [0.425, 0.575]])  # 4 bins over [0.2, 0.8]: 0.15 wide
    torch.testing.assert_close(bin_values(bins, 4, 0.2, 0.8, None), centres)
    torch.testing.assert_close(bin_centres(bins, 4, 0.2, 0.8), centres)
    drawn = bin_values(bins.repeat(500, 1), 4, 0.2, 0.8, torch.Generator().manual_seed(0))
    assert ((drawn - centres.repeat(500, 1)).abs() <= 0.075).all() and (
        drawn - centres.repeat(500, 1)
    ).abs().max() > 0.07


def test_area_downsample_averages_blocks():
    from sbvae.datasets.common import area_downsample

    images = torch.arange(64.0).view(1, 1, 8, 8)
    assert area_downsample(images, 8) is images
    half = area_downsample(images, 4)
    assert (
        half.shape == (1, 1, 4, 4)
        and half[0, 0, 0, 0] == (0 + 1 + 8 + 9) / 4
        and half[0, 0, 3, 3] == (54 + 55 + 62 + 63) / 4
    )
    assert area_downsample(images, 1).item() == 31.5


def test_hsv_to_rgb_on_any_leading_shape():
    import colorsys

    from sbvae.datasets.common import hsv_to_rgb

    hsv = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.tensor([[colorsys.hsv_to_rgb(*c) for c in row] for row in hsv.tolist()], dtype=torch.float64)
    torch.testing.assert_close(hsv_to_rgb(hsv), expected)
    half = hsv_to_rgb(hsv.half())  # the input's precision is kept (float16 under mixed precision)
    assert half.dtype == torch.float16 and (half.double() - expected).abs().max() < 1e-2
