"""Convolutional encoder q(z|x) of paper Tables 1 and 2."""

from collections.abc import Sequence

import torch
from torch import nn

from .init import init_weights
from .same_padding import SameConv2d


class ConvEncoder(nn.Module):
    """Conv(k, s2, "same") + ReLU per `channels` entry, FC(hidden) + ReLU, FC(2 * latent_dim).

    Table 1 (VAE, beta-VAE): channels=(64, 64, 64, 64). Table 2 (FactorVAE): (32, 32, 64, 64).
    forward(x [B, C, H, W]) -> (mean, logvar), each [B, latent_dim].
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 10,
        channels: Sequence[int] = (64, 64, 64, 64),
        kernel_size: int = 4,
        hidden: int = 256,
    ):
        super().__init__()
        channels = tuple(channels)
        factor = 2 ** len(channels)
        if image_size % factor != 0 or image_size < factor:
            raise ValueError(
                f"ConvEncoder halves the image {len(channels)} times, so image_size must be a "
                f"multiple of {factor} (got {image_size}); resize the images or use fewer channels entries."
            )
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim

        layers, prev = [], in_channels
        for width in channels:
            layers += [SameConv2d(prev, width, kernel_size, stride=2), nn.ReLU()]
            prev = width
        side = image_size // factor
        layers += [nn.Flatten(), nn.Linear(prev * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ConvEncoder expected images of shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}."
            )
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar
