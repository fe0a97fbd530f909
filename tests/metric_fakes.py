"""Fakes shared by the metric tests: ground truth whose "image" is the factor row itself; MIG by the book."""

import numpy as np
import torch
from sklearn.metrics import mutual_info_score

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


def mig_by_hand(codes, factors, bins=20):
    """MIG as METRICS.md states it, with numpy's histogram edges and sklearn's mutual information: (score, gaps)."""
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    labels = [np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T]
    gaps = []
    for f in factors.T:
        mi = sorted(mutual_info_score(label, f) for label in labels)
        gaps.append((mi[-1] - mi[-2]) / mutual_info_score(f, f))
    return float(np.mean(gaps)), gaps
