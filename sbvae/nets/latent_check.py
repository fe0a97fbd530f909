"""Shape check shared by the decoders' forward()."""

import torch


def check_latents(z: torch.Tensor, latent_dim: int, owner: str) -> None:
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{owner} expected latents of shape [B, {latent_dim}], got {list(z.shape)}.")
