"""FactorVAE total-correlation discriminator (Kim & Mnih 2018)."""

import torch
from torch import nn

from .init import init_weights


class Discriminator(nn.Module):
    """`layers` x (Linear(hidden) + LeakyReLU), then Linear(2).

    forward(z [B, latent_dim]) -> logits [B, 2]; which column means "from q(z)" and which
    "dimension-wise permuted" is the objective's convention, not this network's.
    """

    def __init__(self, latent_dim: int = 10, hidden: int = 1000, layers: int = 6, negative_slope: float = 0.2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"Discriminator needs layers >= 1 (got {layers}).")
        blocks, prev = [], latent_dim
        for _ in range(layers):
            blocks += [nn.Linear(prev, hidden), nn.LeakyReLU(negative_slope)]
            prev = hidden
        blocks.append(nn.Linear(prev, 2))
        self.net = nn.Sequential(*blocks)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
