"""Convolutions with TensorFlow "same" padding, as the paper's layers use.

out = in / stride for convolutions and in * 2 for the stride-2 deconvolutions. TF puts the
odd extra padding pixel of even kernels at the right/bottom. PyTorch refuses padding="same"
for strided convolutions and, for stride 1, warns and pads through a copy anyway, so the
padding is done explicitly here.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SameConv2d(nn.Conv2d):
    """Conv(k, stride) with TF "same" padding; input sizes must be multiples of the stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        # Symmetric padding is left to the convolution itself (no copy of the input).
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=before if before == after else 0
        )
        self._explicit_pad = None if before == after else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad is not None:
            x = F.pad(x, self._explicit_pad)
        return super().forward(x)


def doubling_deconv(in_channels: int, out_channels: int, kernel_size: int) -> nn.ConvTranspose2d:
    """DeConv(k, stride 2) whose output is exactly twice its input size."""
    # out = (n - 1) * 2 - 2 * padding + k + output_padding = 2n.
    output_padding = kernel_size % 2
    padding = (kernel_size - 2 + output_padding) // 2
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, stride=2, padding=padding, output_padding=output_padding
    )
