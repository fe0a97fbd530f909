"""Fakes shared by the metric tests: ground truth whose "image" is the factor row itself."""
import torch

from sbvae.datasets.base import GroundTruthData

DSPRITES_SIZES = (3, 6, 40, 32, 32)  # shape, scale, orientation, posX, posY (colour dropped)
DSPRITES_NAMES = ("shape", "scale", "orientation", "posX", "posY")


class FactorData(GroundTruthData):
    """Renders a factor row as float [n, K, 1, 1], so a representation can be the identity, a permutation, noise..."""

    image_size = 1

    def __init__(self, factor_sizes=DSPRITES_SIZES, has_ground_truth=True, factor_names=None):
        self.factor_sizes = tuple(factor_sizes)
        self.factor_names = tuple(factor_names or (f"f{i}" for i in range(len(factor_sizes))))
        self.channels = len(factor_sizes)
        self.has_ground_truth = has_ground_truth

    def render(self, factors, generator=None):
        return factors.double()[:, :, None, None]

    def factor_values(self, factors):
        return factors.double()


def identity(x):
    return x.flatten(1)


def noise(dim=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape[0], dim, generator=gen, dtype=torch.float64)
