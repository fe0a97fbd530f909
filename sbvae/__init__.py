"""sbvae: Spatial Broadcast VAEs (Watters et al. 2019) with PyTorch Lightning.

In a notebook: ``run = sbvae.load("runs/quickstart/version_0")``, then ``run.model``, ``run.data`` and
``sbvae.metrics``; see docs/python-api.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


def load(path, replica: int | None = None, which: str = "last", device="cpu", dataset_options: dict | None = None):
    """A trained run from a checkpoint file or a run folder: ``sbvae.loading.LoadedRun`` (model in eval mode,
    dataset, config). ``replica=K`` picks a replica of a --replicas run folder; ``which`` is "last" or "best"."""
    # torch and Lightning load on first use, not on `import sbvae`
    from sbvae.loading import load as load_run

    return load_run(path, replica=replica, which=which, device=device, dataset_options=dataset_options)


def __getattr__(name: str):
    # `sbvae.metrics.compute_mig(...)` after a bare `import sbvae`: submodules import when first named.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
