"""Fixed x/y coordinate channels, shared by the Spatial Broadcast and CoordConv decoders."""

import torch
from torch import nn


def coordinate_grid(height: int, width: int) -> torch.Tensor:
    """[2, height, width] tensor: channel 0 is x = linspace(-1, 1, width) varying along the
    width (last dim), channel 1 is y = linspace(-1, 1, height) varying along the height."""
    y, x = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij")
    return torch.stack([x, y])


def append_coords(features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Concatenate a [2, H, W] grid after the channels of a [B, C, H, W] batch."""
    # Cast so that bf16/fp16 activations are not silently promoted back to fp32 by cat.
    grid = grid.to(features.dtype).expand(features.shape[0], -1, -1, -1)
    return torch.cat([features, grid], dim=1)


class AppendCoords(nn.Module):
    """Appends the x/y channels of a fixed height x width grid (CoordConv, Liu et al. 2018)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        # A buffer, not a tensor made in forward: it follows .to(device), DDP and checkpoints.
        self.register_buffer("grid", coordinate_grid(height, width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return append_coords(features, self.grid)

    def extra_repr(self) -> str:
        return f"height={self.grid.shape[1]}, width={self.grid.shape[2]}"
