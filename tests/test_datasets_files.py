"""File-based datasets (3dshapes.h5, a chairs folder) and the sbvae-data command."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from sbvae.cli.data import main
from sbvae.datasets import DataError, load
from sbvae.datasets.sprites import DSPRITES_FILE

VALUES = [
    np.round(np.linspace(0, 0.9, 10), 1),
    np.round(np.linspace(0, 0.9, 10), 1),
    np.round(np.linspace(0, 0.9, 10), 1),
    np.linspace(0.75, 1.25, 8),
    np.arange(4.0),
    np.linspace(-30, 30, 15),
]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBVAE_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def write_h5(path, picks=((0, 3), (1, 9), (2, 5), (0, 7), (1, 2), (0, 14)), labels=None, keys=("images", "labels")):
    """A tiny 3dshapes-format file over a sub-grid of the official label values, last factor fastest."""
    lists = [VALUES[k][list(p)] for k, p in enumerate(picks)]
    grid = np.stack(np.meshgrid(*lists, indexing="ij"), -1).reshape(-1, 6) if labels is None else labels
    images = np.random.default_rng(0).integers(0, 256, (len(grid), 64, 64, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(keys[0], data=images)
        f.create_dataset(keys[1], data=grid.astype(np.float64))
    return images, grid


def test_shapes3d_from_a_tiny_file(_data_dir):
    images, labels = write_h5(_data_dir / "3dshapes.h5")
    with pytest.raises(DataError, match="not the official 10 x 10 x 10 x 8 x 4 x 15.*allow_subset=True"):
        load("shapes3d")
    data = load("shapes3d", allow_subset=True)
    assert data.factor_names[0] == "floor_hue" and data.factor_sizes == (2,) * 6 and data.channels == 3
    f = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
    index = (f * torch.tensor([32, 16, 8, 4, 2, 1])).sum(1).numpy()
    out = data.render(f)
    assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(
        out, torch.from_numpy(images[index]).permute(0, 3, 1, 2).float() / 255
    )  # repeated, unsorted rows
    assert np.allclose(data.factor_values(f).numpy(), labels[index])
    small = load("shapes3d", allow_subset=True, image_size=16)
    assert torch.allclose(small.render(f), torch.nn.functional.avg_pool2d(out, 4), atol=1e-6)
    held = load("shapes3d", allow_subset=True, in_memory=True)
    assert torch.equal(held.render(f), out)
    with pytest.raises(DataError, match="divide 64"):
        load("shapes3d", allow_subset=True, image_size=24)


def test_shapes3d_refuses_missing_wrong_keyed_and_misordered_files(_data_dir, tmp_path):
    with pytest.raises(DataError) as e:
        load("shapes3d")
    assert "3dshapes.h5" in str(e.value) and "deepmind/3d-shapes" in str(e.value) and "path=" in str(e.value)
    write_h5(tmp_path / "keys.h5", keys=("imgs", "labels"))
    with pytest.raises(DataError, match="lacks the key"):
        load("shapes3d", path=str(tmp_path / "keys.h5"))
    _, labels = write_h5(tmp_path / "ok.h5")
    write_h5(tmp_path / "order.h5", labels=labels[::-1])
    with pytest.raises(DataError, match="last factor varying fastest"):
        load("shapes3d", path=str(tmp_path / "order.h5"), allow_subset=True)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="cannot be read as HDF5"):
        load("shapes3d", path=str(tmp_path / "junk.h5"))


def make_chairs(folder):
    """Five 600x600 renderings in nested folders: black margins outside the crop box, grey inside."""
    for i in range(5):
        sub = folder / f"chair_{i // 2}" / "renders"
        sub.mkdir(parents=True, exist_ok=True)
        img = np.zeros((600, 600, 3), np.uint8)
        img[128:558, 128:558] = 40 * (i + 1)
        Image.fromarray(img).save(sub / f"image_{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")


def test_chairs_from_a_folder_of_pngs(_data_dir, tmp_path, monkeypatch):
    make_chairs(tmp_path / "chairs")
    data = load("chairs", path=str(tmp_path / "chairs"), image_size=16)
    assert data.has_ground_truth is False and data.factor_names == ("index",) and data.factor_sizes == (5,)
    assert data.channels == 1
    f = data.sample_factors(8, torch.Generator().manual_seed(0))
    assert f.shape == (8, 1) and int(f.max()) < 5
    out = data.render(torch.arange(5).view(-1, 1))
    assert out.shape == (5, 1, 16, 16)
    # the default crop keeps only the 430x430 box: uniform grey 40 (i + 1), no black margin
    assert torch.allclose(out.flatten(1).amin(1), torch.arange(1, 6) * 40 / 255, atol=2 / 255)
    assert torch.allclose(out.flatten(1).amax(1), torch.arange(1, 6) * 40 / 255, atol=2 / 255)
    uncropped = load("chairs", path=str(tmp_path / "chairs"), image_size=16, crop=None, cache=False)
    assert uncropped.render(torch.tensor([[0]])).min() < 0.01
    caches = list((_data_dir / "chairs").glob("*.npy"))
    assert len(caches) == 1 and not list((_data_dir / "chairs").glob("*.partial"))
    # the second load reads the cache instead of the images
    monkeypatch.setattr(type(data), "_build", lambda *a: pytest.fail("the cache was not used"))
    again = load("chairs", path=str(tmp_path / "chairs"), image_size=16)
    assert torch.equal(again.render(torch.arange(5).view(-1, 1)), out)


def test_chairs_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*path="):
        load("chairs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load("chairs", path=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="crop must be"):
        load("chairs", path=str(tmp_path / "empty"), crop=(10, 10, 5, 5))


def test_metrics_can_tell_chairs_has_no_ground_truth(tmp_path):
    make_chairs(tmp_path / "c")
    assert load("chairs", path=str(tmp_path / "c"), image_size=8).has_ground_truth is False
    assert load("dsprites", image_size=8).has_ground_truth is True


# ---- sbvae-data ---------------------------------------------------------------------------------
def test_cli_list(capsys, _data_dir):
    write_h5(_data_dir / "3dshapes.h5")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("dsprites", "colored-sprites", "circles-xyh-tiny", "shapes3d", "chairs"):
        assert f"\n{name}: " in out
    assert "shape 3, scale 6, orientation 40, posX 32, posY 32" in out
    assert "3dshapes.h5 [present]" in out and "rendered_chairs [missing]" in out


def test_cli_generate_then_verify_round_trip(capsys, tmp_path):
    out = tmp_path / "gen"
    args = [
        "generate",
        "dsprites",
        "--out",
        str(out),
        "--subset",
        "posX=0,31",
        "--subset",
        "posY=3",
        "--subset",
        "orientation=0,20",
        "--chunk",
        "7",
    ]
    assert main(args) == 0
    path = out / DSPRITES_FILE
    assert path.is_file() and "wrote" in (out := capsys.readouterr().out)
    assert "{allow_subset: true}" in out
    assert main(["verify", str(path), "--allow-subset"]) == 0
    report = capsys.readouterr().out
    assert "imgs: shape (72, 64, 64), dtype uint8" in report and "OK" in report
    assert main(["verify", str(path)]) == 1
    assert "WRONG: it holds a sub-grid of 72 images" in (out := capsys.readouterr().out)
    assert "passes with --allow-subset" in out
    assert main(args) == 2  # exists: refuse without --force
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1 and "Traceback" not in err
    data = load("dsprites", path=str(path), allow_subset=True)
    assert data.factor_sizes == (3, 6, 2, 2, 1)


def test_cli_verify_an_h5(capsys, tmp_path):
    write_h5(tmp_path / "3dshapes.h5")
    assert main(["verify", str(tmp_path / "3dshapes.h5"), "--allow-subset"]) == 0
    assert main(["verify", str(tmp_path / "3dshapes.h5")]) == 1
    assert "not the official" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["verify", "/nonexistent/file.npz"], "does not exist"),
        (["generate", "dsprites", "--out", "{tmp}", "--subset", "colour=1"], "unknown dSprites factor"),
        (["generate", "dsprites", "--out", "{tmp}", "--subset", "posX"], "FACTOR=i,j"),
        (["generate", "dsprites", "--out", "{tmp}", "--subset", "posX=40"], "must lie in 0..31"),
    ],
)
def test_cli_user_errors_are_one_sentence(capsys, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("sbvae-data: error: ") and err.count("\n") == 1


def test_cli_verify_reports_a_truncated_npz(capsys, tmp_path):
    assert main(["generate", "dsprites", "--out", str(tmp_path), "--subset", "posX=0", "--subset", "posY=0"]) == 0
    path = tmp_path / DSPRITES_FILE
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:-200])
    capsys.readouterr()
    assert main(["verify", str(bad), "--allow-subset"]) == 1
    assert "truncated" in capsys.readouterr().out


def test_one_grid_check_for_npz_and_h5_files():
    from sbvae.datasets.file_check import FileCheck, check_grid

    grid = np.stack(np.meshgrid([0, 1], [0, 5, 9], indexing="ij"), -1).reshape(-1, 2)  # b fastest
    report = check_grid(FileCheck((2, 3)), grid, "labels", ("a", "b"), allow_subset=False)
    assert report.ok and not report.is_subset and [v.tolist() for v in report.values] == [[0, 1], [0, 5, 9]]
    assert (
        "last factor varying fastest (b)"
        in check_grid(FileCheck((2, 3)), grid[::-1], "labels", ("a", "b"), False).problems[0]
    )
    assert "not every combination" in check_grid(FileCheck((2, 3)), grid[:5], "labels", ("a", "b"), False).problems[0]
    sub = check_grid(FileCheck((2, 3)), grid[:3], "labels", ("a", "b"), allow_subset=False)
    assert sub.is_subset and sub.problems == ["it holds a sub-grid of 3 images (a 1 x b 3), not the official 2 x 3"]
    with pytest.raises(
        DataError, match=r"x.npz is not a usable toy file: it holds a sub-grid .*allow_subset=True.*; get it\."
    ):
        sub.require_usable("x.npz", "toy", "get it")
    assert check_grid(FileCheck((2, 3)), grid[:3], "labels", ("a", "b"), allow_subset=True).ok


class HostWork(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every operation that touches host data while the render should run on the (meta) device alone:
    a tensor made from Python or numpy data, a value read back, or any tensor not on the meta device."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten._local_scalar_dense.default) or any(
            t.device.type != "meta" for t in tensors
        ):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def renders_on_the_device_alone(data) -> bool:
    """A training step's draw and render with every tensor on the meta device, after one call has warmed the
    caches: pure if nothing touched the host (reading a file or ``.cpu()`` fails outright on meta)."""
    from sbvae import keyed

    step = torch.zeros((), dtype=torch.int64, device="meta")
    draw = lambda: data.render(
        data.sample_factors(4, keyed.stream(keyed.FACTORS, 3, 0, step)), keyed.stream(keyed.RENDER, 3, 0, step)
    )
    from torch.fx.experimental import _config as fx_config

    try:
        # The first call may fill caches any way it likes (a captured step is warmed up eagerly); on meta a
        # data-dependent cache (a masked selection) needs a stand-in value to be built at all.
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            draw()
        watch = HostWork()
        with watch:
            draw()
    except (NotImplementedError, RuntimeError):
        return False
    return not watch.seen


def test_every_dataset_declares_whether_its_render_is_device_pure(_data_dir, tmp_path):
    """What the engine reads to decide whether a CUDA graph may capture the step."""
    from sbvae.datasets import available
    from sbvae.datasets.npz import write_dsprites_npz

    write_h5(_data_dir / "3dshapes.h5")
    make_chairs(tmp_path / "chairs")
    npz = write_dsprites_npz(
        tmp_path / DSPRITES_FILE,
        subset={"shape": [0, 1], "scale": [0], "orientation": [0], "posX": [0, 31], "posY": [0, 31]},
        chunk=50,
    )
    options = {"shapes3d": {"allow_subset": True}, "chairs": {"path": str(tmp_path / "chairs"), "image_size": 16}}
    cases = [(name, options.get(name, {})) for name in available()]
    cases += [
        ("shapes3d", {"allow_subset": True, "in_memory": True}),
        ("dsprites", {"path": str(npz), "allow_subset": True}),
        ("colored-sprites", {"path": str(npz), "allow_subset": True}),
        ("circles-xy", {"holdout": "center"}),
        ("circles-xh", {"blank_fraction": 0.5}),
    ]
    declared = {}
    for name, opts in cases:
        data = load(name, **opts)
        declared[(name, tuple(sorted(opts)))] = data.device_pure_render
        assert data.device_pure_render == renders_on_the_device_alone(data), (name, opts)
    assert declared[("shapes3d", ("allow_subset",))] is False  # read from the file on the host each step
    assert declared[("shapes3d", ("allow_subset", "in_memory"))] is True
    assert sum(declared.values()) == len(declared) - 1


def test_the_step_runs_eagerly_for_a_render_on_the_host(_data_dir, capsys):
    from sbvae.errors import SBVAEError
    from sbvae.trainer_step import resolved_step_mode

    write_h5(_data_dir / "3dshapes.h5")
    from_file, in_memory = load("shapes3d", allow_subset=True), load("shapes3d", allow_subset=True, in_memory=True)
    cuda = torch.device("cuda", 0)
    assert resolved_step_mode("auto", cuda, False, in_memory) == "graph"
    assert resolved_step_mode("auto", cuda, False, from_file) == "eager"
    assert resolved_step_mode("auto", cuda, True, in_memory) == "eager"  # DDP averages gradients
    assert resolved_step_mode("auto", torch.device("cpu"), False, in_memory) == "eager"
    with pytest.raises(SBVAEError, match="in_memory: true"):
        resolved_step_mode("graph", cuda, False, from_file)
