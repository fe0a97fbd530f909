"""Pictures the paper relies on, as image tensors (TensorBoard, files, notebooks).

Each function takes a model with ``encode`` / ``decode`` / ``hparams.likelihood``
(``sbvae.module.VAE`` and ``FactorVAE``) and returns a [3, H, W] grid in [0, 1]
built with ``torchvision.utils.make_grid``.
"""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from sbvae.errors import SBVAEError
from sbvae.objectives import mean_image


def _images(model, z: torch.Tensor) -> torch.Tensor:
    return mean_image(model.decode(z), model.hparams.likelihood).float().cpu()


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor) -> torch.Tensor:
    """Inputs in the top row, their reconstructions (decoded posterior means) below."""
    recon = _images(model, model.encode(x)[0])
    return make_grid(torch.cat([x.float().cpu(), recon]), nrow=x.shape[0], padding=2, pad_value=1.0)


@torch.no_grad()
def latent_order(model, x: torch.Tensor) -> torch.Tensor:
    """Latent indices sorted by mean posterior variance over ``x``, most informative (smallest) first."""
    _, logvar = model.encode(x)
    return logvar.exp().mean(0).argsort()


@torch.no_grad()
def traversal_grid(
    model,
    seed: torch.Tensor,
    order: torch.Tensor,
    steps: int = 9,
    limit: float = 2.0,
    max_latents: int | None = None,
) -> torch.Tensor:
    """One row per latent (in ``order``), set in turn to ``steps`` values from -limit to +limit (absolute values,
    the prior's range, as in the paper's figures); the other latents stay at the posterior mean of ``seed``,
    one image [C, H, W].
    """
    mean = model.encode(seed.unsqueeze(0))[0][0]
    latents = order[:max_latents] if max_latents else order
    values = torch.linspace(-limit, limit, steps, device=mean.device, dtype=mean.dtype)
    z = mean.repeat(len(latents), steps, 1)  # [rows, steps, D]
    rows = torch.arange(len(latents), device=mean.device)
    z[rows, :, latents.to(mean.device)] = values
    pictures = _images(model, z.reshape(-1, mean.shape[0]))
    return make_grid(pictures, nrow=steps, padding=2, pad_value=1.0)


@torch.no_grad()
def traverse(
    model,
    image: torch.Tensor,
    latents: int | list[int] | torch.Tensor | None = None,
    steps: int = 9,
    limit: float = 2.0,
) -> torch.Tensor:
    """The traversal of one image [C, H, W] as a [3, H', W'] grid: ``traversal_grid`` with its rows chosen for you.

    ``latents`` are the rows' latents, in order; an int n takes the n most informative (smallest posterior
    variance on ``image``); None takes them all, most informative first.  To rank them over many images
    instead, pass ``latents=latent_order(model, images)``.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise SBVAEError(
            f"traverse takes one image [C, H, W], got a tensor of shape {tuple(image.shape)}: pass images[i]."
        )
    image = image.to(next(model.parameters()).device)
    ranked = latent_order(model, image.unsqueeze(0))
    if latents is None or isinstance(latents, int):
        order = ranked[:latents] if latents is not None else ranked
    else:
        order = torch.as_tensor(latents, dtype=torch.long).reshape(-1).cpu()
        if len(order) == 0 or int(order.min()) < 0 or int(order.max()) >= len(ranked):
            raise SBVAEError(
                f"latents {order.tolist()} must be indices of the model's {len(ranked)} latents (0 to {len(ranked) - 1})."
            )
    if len(order) == 0:
        raise SBVAEError(f"latents={latents} leaves no row to draw: ask for at least one latent.")
    return traversal_grid(model, image, order, steps=steps, limit=limit)
