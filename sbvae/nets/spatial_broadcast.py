"""Spatial Broadcast decoder (Watters et al. 2019), with the paper's ablations as arguments."""

from collections.abc import Sequence

import torch
from torch import nn

from .coords import append_coords, coordinate_grid
from .init import init_weights
from .latent_check import check_latents
from .same_padding import SameConv2d, doubling_deconv


class SpatialBroadcastDecoder(nn.Module):
    """Tile z over a grid, append x/y coordinate channels, apply stride-1 convs -> logits.

    Default = paper Table 1: tile to 64x64, append [x, y], Conv(k4, s1, 64) + ReLU twice,
    Conv(k4, s1, out_channels); 81,027 parameters for 10 latents and 3 channels. The channel
    order into the first conv is [z..., x, y]; x = linspace(-1, 1) varies along the width,
    y = linspace(-1, 1) along the height.

    Arguments beyond the paper's default:
      channels: one stride-1 Conv + ReLU per entry before the output conv. Table 5 sweeps
        1-4 entries; 3D Object-in-Room's deeper decoder (three extra layers) is (64,) * 5.
      padding: "same" (paper: zero padding; like TF, the extra pixel of even kernels goes at
        the right/bottom) or "valid" (MONet/IODINE): z is tiled to T = H + n * (k - 1)
        for n = len(channels) + 1 unpadded convs, the coordinates are linspace(-1, 1, T) over
        that enlarged tile, so the receptive-field centres of the visible H pixels span only
        [-(H - 1) / (T - 1), (H - 1) / (T - 1)] (about +-0.875 at 64 px, k=4, 3 convs).
      mlp_layers, mlp_width: pre-broadcast MLP of FC(mlp_width) + ReLU layers (Tables 7, 9);
        the tiled vector then has mlp_width channels instead of latent_dim.
      upscales: Table 10. The first `upscales` layers (from the input side, the output conv
        counting as the last) become DeConv(k, s2) with the same widths, and z is tiled to
        image_size / 2**upscales. Needs padding="same".
      shuffle_coords, shuffle_seed: Appendix B ablation. The h*w (x, y) pairs of the grid are
        permuted once, pairs kept together, with torch.Generator().manual_seed(shuffle_seed).
        The shuffled grid is the persistent buffer `coords`, so a checkpoint restores the exact
        grid it was trained with whatever seed the loading model was built with.

    forward(z [B, latent_dim]) -> logits [B, out_channels, image_size, image_size].
    """

    def __init__(
        self,
        latent_dim: int = 10,
        out_channels: int = 3,
        image_size: int = 64,
        channels: Sequence[int] = (64, 64),
        kernel_size: int = 4,
        padding: str = "same",
        mlp_layers: int = 0,
        mlp_width: int = 256,
        upscales: int = 0,
        shuffle_coords: bool = False,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        widths = tuple(channels) + (out_channels,)
        n_layers = len(widths)
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid' (got {padding!r}).")
        if mlp_layers < 0:
            raise ValueError(f"mlp_layers must be >= 0 (got {mlp_layers}).")
        if not 0 <= upscales <= n_layers:
            raise ValueError(
                f"upscales={upscales} but the decoder has only {n_layers} conv layers; "
                f"use 0 <= upscales <= {n_layers} or add channels entries."
            )
        if upscales and padding != "same":
            raise ValueError("upscales > 0 needs padding='same'; set one of them back to its default.")
        if image_size % (2**upscales) != 0:
            raise ValueError(
                f"upscales={upscales} doubles the tile {upscales} times, so image_size must be a "
                f"multiple of {2**upscales} (got {image_size}); use fewer upscales or resize the images."
            )
        self.latent_dim = latent_dim
        if padding == "valid":
            self.tile_size = image_size + n_layers * (kernel_size - 1)
        else:
            self.tile_size = image_size // 2**upscales

        mlp, prev = [], latent_dim
        for _ in range(mlp_layers):
            mlp += [nn.Linear(prev, mlp_width), nn.ReLU()]
            prev = mlp_width
        self.mlp = nn.Sequential(*mlp)  # empty Sequential is the identity

        layers, prev = [], prev + 2  # + x and y channels
        for i, width in enumerate(widths):
            if i < upscales:
                layers.append(doubling_deconv(prev, width, kernel_size))
            elif padding == "valid":
                layers.append(nn.Conv2d(prev, width, kernel_size))
            else:
                layers.append(SameConv2d(prev, width, kernel_size))
            if i < n_layers - 1:  # no ReLU on the logits
                layers.append(nn.ReLU())
            prev = width
        self.convs = nn.Sequential(*layers)

        grid = coordinate_grid(self.tile_size, self.tile_size)
        if shuffle_coords:
            generator = torch.Generator().manual_seed(shuffle_seed)
            perm = torch.randperm(self.tile_size**2, generator=generator)
            grid = grid.flatten(1)[:, perm].reshape_as(grid)
        # Persistent: it moves with .to(device)/DDP and is restored by load_state_dict.
        self.register_buffer("coords", grid)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_latents(z, self.latent_dim, type(self).__name__)
        h = self.mlp(z)
        tiled = h[:, :, None, None].expand(-1, -1, self.tile_size, self.tile_size)
        return self.convs(append_coords(tiled, self.coords))
