"""Weight initialisation shared by every network (paper Appendix A)."""

import math

from torch import nn


def init_weights(module: nn.Module) -> nn.Module:
    """Truncated-normal weights, zero biases, for every Conv2d/ConvTranspose2d/Linear inside `module`.

    The paper follows the Sonnet/TensorFlow default: std = 1/sqrt(fan_in), samples beyond
    2 std redrawn. fan_in counts the input channels times the kernel area for convolutions
    *and* transposed convolutions (PyTorch stores the latter as [in, out, k, k], so its own
    fan-in helper would use the output channels instead).
    """
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            fan_in = m.in_channels * math.prod(m.kernel_size)
        elif isinstance(m, nn.Conv2d):
            fan_in = (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        std = 1.0 / math.sqrt(fan_in)
        nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return module
