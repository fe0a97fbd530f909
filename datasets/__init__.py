"""Ground-truth datasets (installed as ``sbvae.datasets``)."""
from sbvae.datasets.base import GroundTruthData

__all__ = ["GroundTruthData"]
