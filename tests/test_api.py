"""The Python API of docs/python-api.md: sbvae.load, the loaded model, and the page's own example."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from test_eval import checkpoint  # noqa: F401  (a tiny trained quickstart run, shared with the eval tests)

import sbvae
from sbvae.errors import SBVAEError
from sbvae.visualize import latent_order, traversal_grid

PAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "python-api.md")


def python_blocks(path: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", open(path).read(), flags=re.S | re.M)


@pytest.fixture
def run_folder(checkpoint):  # noqa: F811
    return os.path.dirname(os.path.dirname(checkpoint))


def test_the_pages_example_runs(run_folder, tmp_path, monkeypatch):
    """Every python block of the page, in order, in one namespace, where the page's runs/quickstart/version_0
    is the tiny run."""
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    os.symlink(run_folder, tmp_path / "runs" / "quickstart" / "version_0")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(PAGE)
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        exec(compile(block, PAGE, "exec"), namespace)
    run = namespace["run"]
    assert not run.model.training and run.step == 6
    assert run.path == str(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    assert namespace["grid"].shape[0] == 3 and (tmp_path / "traversal.png").is_file()
    assert 0.0 <= namespace["mig"].score <= 1.0 and set(namespace["results"]) == {"elbo", "mig"}


def test_import_sbvae_loads_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, sbvae; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_a_file_and_its_run_folder_load_the_same_model(checkpoint, run_folder):  # noqa: F811
    by_file, by_folder = sbvae.load(checkpoint), sbvae.load(run_folder)
    assert by_file.path == by_folder.path == os.path.abspath(checkpoint)
    for name, value in by_file.model.state_dict().items():
        assert torch.equal(by_folder.model.state_dict()[name], value)
    assert by_file.config["data"]["dataset"] == "colored-sprites" and by_file.config["data"]["image_size"] == 16
    assert by_file.config["model"]["class_path"] == "sbvae.module.VAE"
    assert by_file.data is by_file.datamodule.data and by_file.data.factor_names
    best = sbvae.load(run_folder, which="best")
    assert re.fullmatch(r"best-step=\d+\.ckpt", os.path.basename(best.path))


def test_traverse_is_the_pictures_traversal_grid(checkpoint):  # noqa: F811
    run = sbvae.load(checkpoint)
    image = run.images(1)[0]
    order = latent_order(run.model, image.unsqueeze(0))
    assert torch.equal(run.model.traverse(image), traversal_grid(run.model, image, order))
    assert torch.equal(
        run.model.traverse(image, latents=[3, 1], steps=5),
        traversal_grid(run.model, image, torch.tensor([3, 1]), steps=5),
    )
    assert torch.equal(run.model.traverse(image, latents=2), traversal_grid(run.model, image, order[:2]))
    with pytest.raises(SBVAEError, match="pass images"):
        run.model.traverse(run.images(2))
    with pytest.raises(SBVAEError, match=r"indices of the model's 10 latents \(0 to 9\)"):
        run.model.traverse(image, latents=[10])


def test_a_replica_run_folder_loads_one_replica(checkpoint, run_folder, tmp_path):  # noqa: F811
    run = tmp_path / "version_0"
    for r in (0, 3):
        (run / f"replica_{r}" / "checkpoints").mkdir(parents=True)
        shutil.copy(checkpoint, run / f"replica_{r}" / "checkpoints" / "last.ckpt")
        shutil.copy(os.path.join(run_folder, "status.json"), run / f"replica_{r}" / "status.json")
    assert sbvae.load(run, replica=3).path == str(run / "replica_3" / "checkpoints" / "last.ckpt")
    assert sbvae.load(run / "replica_0").path == str(run / "replica_0" / "checkpoints" / "last.ckpt")
    for args, says in (
        ((run,), "is a replica-parallel run of 2 replicas: pass replica=K (one of 0, 3)"),
        ((run,), "or its folder replica_K"),
        ((run, 1), "holds no replica_1: pass a replica it holds (replica_0, replica_3)"),
        ((run_folder, 0), "it is a single run: leave out replica"),
        ((checkpoint, 0), "is a checkpoint file, not a replica-parallel run folder: leave out replica=0"),
        ((tmp_path / "nowhere",), "does not exist: pass a checkpoint file or a run folder"),
        ((tmp_path,), "holds no checkpoints/last.ckpt"),
    ):
        with pytest.raises(SBVAEError, match=re.escape(says)):
            sbvae.load(*args)
    with pytest.raises(SBVAEError, match="use 'last' or 'best'"):
        sbvae.load(run_folder, which="first")
    with pytest.raises(SBVAEError, match=re.escape("kept no best checkpoint")):
        sbvae.load(run / "replica_0", which="best")
