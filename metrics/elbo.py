"""ELBO, NLL and KL of a VAE on held-out data, in nats per image (the paper's units).

The model enters as two callables, so this module needs no LightningModule:
``encode(x) -> (mean, logvar)`` of q(z|x) [n, D] each, and
``decode_nll(z, x) -> -log p(x|z)`` per image [n] (summed over pixels).
The reported ``elbo`` is the negative ELBO, NLL + KL (lower is better), as in
the paper's tables and ``sbvae.objectives.ELBOTerms``. The same pass counts the
latents used (mean posterior std < 0.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sbvae.metrics.latents_used import count_used
from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    make_generator,
    render_generator,
    resolve_device,
)
from sbvae.objectives import gaussian_kl, reparameterize


@dataclasses.dataclass(frozen=True)
class ELBOResult(MetricResult):
    score: float  # = elbo
    elbo: float  # negative ELBO = nll + kl, nats per image
    nll: float
    kl: float
    num_images: int
    latents_used: int
    mean_std: torch.Tensor  # [D] posterior std averaged over the images

    def scalars(self) -> dict[str, float]:
        """The paper's first four columns: negative ELBO (the score), NLL, KL and latents used."""
        return {"score": self.score, "nll": self.nll, "kl": self.kl, "latents_used": float(self.latents_used)}


def _image_batches(
    data: Any, num_images: int, gen: torch.Generator, chunk_size: int, device: torch.device
) -> Iterable[torch.Tensor]:
    if hasattr(data, "sample_factors"):  # a ground-truth dataset, which renders what it samples
        factors = data.sample_factors(num_images, gen)
        render_gen = render_generator(gen)
        for start in range(0, num_images, chunk_size):
            yield data.render(factors[start : start + chunk_size].to(device), render_gen)
        return
    seen = 0
    for batch in data:  # any iterable of image batches, e.g. a DataLoader over held-out images
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x[: num_images - seen].to(device)
        seen += x.shape[0]
        yield x
        if seen >= num_images:
            return


@torch.no_grad()
def evaluate_elbo(
    data: Any,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    decode_nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_images: int = 10_000,
    seed: int | torch.Generator | None = 0,
    sample: bool = True,
    latent_threshold: float = 0.5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> ELBOResult:
    """Mean NLL, KL(q(z|x) || N(0, I)) and their sum over ``num_images`` held-out images.

    ``data`` is a GroundTruthData-like object (images rendered from uniform factor
    draws; chairs too, no factors needed) or an iterable of image batches [n, C, H, W]
    (or tuples whose first item is the batch). With ``sample`` (default) the NLL is a
    one-sample estimate at z ~ q(z|x) from a seeded generator; otherwise z = mean.
    """
    gen = make_generator(seed)
    device = resolve_device(encode, device)
    noise_gen = render_generator(gen)
    nll_sum = kl_sum = 0.0
    std_sum: torch.Tensor | float = 0.0
    count = 0
    for x in _image_batches(data, num_images, gen, chunk_size, device):
        mean, logvar = encode(x)
        mean, logvar = mean.double(), logvar.double()
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=noise_gen, dtype=mean.dtype).to(
                mean.device
            )  # CPU draw: same on any device
            z = reparameterize(mean, logvar, eps)
        nll = decode_nll(z.to(x.dtype), x).double()
        kl = gaussian_kl(mean, logvar)
        nll_sum += float(nll.sum())
        kl_sum += float(kl.sum())
        std_sum = std_sum + (0.5 * logvar).exp().sum(dim=0)
        count += x.shape[0]
    if count == 0:
        raise MetricError("evaluate_elbo got no images: data yielded nothing.")
    mean_std = (std_sum / count).cpu()
    elbo = (nll_sum + kl_sum) / count
    return ELBOResult(
        score=elbo,
        elbo=elbo,
        nll=nll_sum / count,
        kl=kl_sum / count,
        num_images=count,
        latents_used=count_used(mean_std, latent_threshold),
        mean_std=mean_std,
    )
