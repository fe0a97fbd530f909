"""What a report asks of a trained model: labelled traversals and the latent geometry of a factor grid.

Each function takes a model with ``encode`` / ``decode`` (sbvae's VAE and FactorVAE) and a
``GroundTruthData`` (or the DataModule around it), and returns arrays for ``sbvae.report.figures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sbvae.loading import validation_images
from sbvae.visualize import latent_order, traversal_grid

PRESENCE = "presence"  # the circles' blank-image factor (Figure 22): not a geometry axis


def load_run(checkpoint: str, device: str = "cpu"):
    """(model, datamodule) of a checkpoint; the one place the report loads models."""
    from sbvae.loading import model_from_checkpoint

    model, datamodule, _ = model_from_checkpoint(checkpoint, device)
    return model, datamodule


@dataclass
class Traversal:
    grid: np.ndarray  # [H, W, 3] in [0, 1]: one row per latent, columns from -limit to +limit
    latents: list[int]  # the latent of each row
    labels: list[str]  # "z3  std 0.12  KL 2.31"
    values: list[float]  # the column values
    cell: int  # image side in the grid (pixels), without the 2-pixel padding


@torch.no_grad()
def traversal(
    model,
    datamodule,
    seed_row: int = 0,
    steps: int = 9,
    limit: float = 2.0,
    max_latents: int | None = None,
    order_images: int = 256,
) -> Traversal:
    """Latent traversal around validation image ``seed_row``, rows sorted by mean posterior variance.

    Each row is labelled with its latent index, its mean posterior std and its mean KL to the prior
    (nats) over ``order_images`` validation images: the used latents have std well below 1, KL above 0.
    """
    device = next(model.parameters()).device
    images = validation_images(datamodule, max(order_images, seed_row + 1), device)
    mean, logvar = model.encode(images)
    std = (0.5 * logvar).exp().mean(0)
    kl = (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)
    order = latent_order(model, images)
    if max_latents:
        order = order[:max_latents]
    grid = traversal_grid(model, images[seed_row], order, steps=steps, limit=limit)
    latents = order.tolist()
    labels = [f"z{i}  std {std[i]:.2f}  KL {kl[i]:.2f}" for i in latents]
    values = torch.linspace(-limit, limit, steps).tolist()
    return Traversal(grid.permute(1, 2, 0).clamp(0, 1).numpy(), latents, labels, values, images.shape[-1])


def geometry_factors(data) -> list[int] | None:
    """The two factor columns a latent-geometry plot spans, or None unless the dataset has exactly two."""
    columns = [i for i, name in enumerate(data.factor_names) if name != PRESENCE]
    return columns if len(columns) == 2 else None


@dataclass
class Geometry:
    factor_names: tuple[str, str]
    factor_values: np.ndarray  # [A, B, 2]: the grid in factor units (cell centres)
    codes: np.ndarray  # [A, B, 2]: posterior means in the two chosen latents
    latents: tuple[int, int]  # the two latents with the smallest mean posterior variance
    heldout: np.ndarray  # [A, B] bool: grid points outside the training split (a hold-out's hole)
    blank: np.ndarray | None  # [2]: the code of a blank image, for datasets with blank images


def grid_indices(size: int, points: int) -> np.ndarray:
    """Equally spaced cell indices, at most ``points`` of them, centred in 0..size-1 (all cells when size <= points)."""
    step = max(1, math.ceil(size / points))
    indices = np.arange(0, size, step)
    return indices + (size - 1 - indices[-1]) // 2


@torch.no_grad()
def latent_geometry(model, data, points: int = 16, batch: int = 256) -> Geometry:
    """Encode a grid of the dataset's two factors and keep the two most informative latents.

    The other factors sit at their middle cell (a presence factor at 1: circles present).  Held-out
    points are those the dataset's training split excludes; the latents are ranked by mean
    posterior variance over the points inside the split, so the hole cannot choose them.
    """
    columns = geometry_factors(data)
    if columns is None:
        raise ValueError(
            f"latent geometry needs a dataset with two factors; {data.name} has {', '.join(data.factor_names)}."
        )
    device = next(model.parameters()).device
    a_idx = torch.as_tensor(grid_indices(data.factor_sizes[columns[0]], points))
    b_idx = torch.as_tensor(grid_indices(data.factor_sizes[columns[1]], points))
    A, B = len(a_idx), len(b_idx)
    factors = torch.tensor([s // 2 for s in data.factor_sizes]).repeat(A * B, 1)
    if PRESENCE in data.factor_names:
        factors[:, data.factor_names.index(PRESENCE)] = 1
    factors[:, columns[0]] = a_idx.repeat_interleave(B)
    factors[:, columns[1]] = b_idx.repeat(A)
    heldout = ~data.in_split(factors)
    means, variances = [], []
    for chunk in factors.split(batch):
        mean, logvar = model.encode(data.render(chunk.to(device)))
        means.append(mean.float().cpu())
        variances.append(logvar.float().exp().cpu())
    mean, variance = torch.cat(means), torch.cat(variances)
    inside = ~heldout if (~heldout).any() else torch.ones_like(heldout)
    latents = variance[inside].mean(0).argsort()[:2]
    blank = None
    if PRESENCE in data.factor_names:
        empty = factors[:1].clone()
        empty[:, data.factor_names.index(PRESENCE)] = 0
        blank = model.encode(data.render(empty.to(device)))[0][0, latents].float().cpu().numpy()
    values = data.factor_values(factors)[:, columns].float().cpu().numpy()
    return Geometry(
        (data.factor_names[columns[0]], data.factor_names[columns[1]]),
        values.reshape(A, B, 2),
        mean[:, latents].numpy().reshape(A, B, 2),
        tuple(int(i) for i in latents),
        heldout.numpy().reshape(A, B),
        blank,
    )
