"""DeConv decoder of paper Tables 1, 2, 6 and 8 (and, with coordinate channels, CoordConv)."""

from collections.abc import Sequence

import torch
from torch import nn

from .coords import AppendCoords
from .init import init_weights
from .latent_check import check_latents
from .same_padding import doubling_deconv


class DeConvDecoder(nn.Module):
    """MLP, reshape to channels[0] x s x s, DeConv(k, s2) + ReLU per `channels` entry, then
    DeConv(k, s2, out_channels) -> logits [B, out_channels, image_size, image_size].

    s = image_size / 2**(len(channels) + 1): 2 at 64 px with four deconvs, as in the paper.
    The MLP has (mlp_layers - 1) hidden FC(mlp_width) + ReLU layers and a last FC (+ ReLU)
    whose width is the reshape size (256 at the paper's defaults), so mlp_layers=1 is the
    paper's single FC(256) and Table 8's 2- and 3-layer MLPs add FC(mlp_width) layers before it.
    Table 2 (FactorVAE): channels=(64, 64, 32, 32). Table 6: 3 to 6 channels entries.
    """

    # CoordConvDecoder flips this: the only difference between the two decoders.
    coord_channels = False

    def __init__(
        self,
        latent_dim: int = 10,
        out_channels: int = 3,
        image_size: int = 64,
        channels: Sequence[int] = (64, 64, 64, 64),
        kernel_size: int = 4,
        mlp_layers: int = 1,
        mlp_width: int = 256,
    ):
        super().__init__()
        channels = tuple(channels)
        name = type(self).__name__
        if len(channels) < 1:
            raise ValueError(f"{name} needs at least one entry in channels.")
        if mlp_layers < 1:
            raise ValueError(f"{name} needs mlp_layers >= 1 (got {mlp_layers}): its last FC makes the reshaped map.")
        factor = 2 ** (len(channels) + 1)
        if image_size % factor != 0 or image_size < factor:
            raise ValueError(
                f"{name} doubles a square map {len(channels) + 1} times, so image_size must be a "
                f"multiple of {factor} (got {image_size}); resize the images or change the number of "
                "channels entries."
            )
        self.latent_dim = latent_dim
        side = image_size // factor

        mlp, prev = [], latent_dim
        for _ in range(mlp_layers - 1):
            mlp += [nn.Linear(prev, mlp_width), nn.ReLU()]
            prev = mlp_width
        mlp += [nn.Linear(prev, channels[0] * side * side), nn.ReLU(), nn.Unflatten(1, (channels[0], side, side))]
        self.mlp = nn.Sequential(*mlp)

        layers, prev = [], channels[0]
        widths = channels + (out_channels,)
        for i, width in enumerate(widths):
            extra = 0
            if self.coord_channels:
                layers.append(AppendCoords(side, side))
                extra = 2
            layers.append(doubling_deconv(prev + extra, width, kernel_size))
            if i < len(channels):  # no ReLU on the logits
                layers.append(nn.ReLU())
            prev, side = width, side * 2
        self.deconvs = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_latents(z, self.latent_dim, type(self).__name__)
        return self.deconvs(self.mlp(z))
