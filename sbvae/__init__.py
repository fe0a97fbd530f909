"""sbvae: Spatial Broadcast VAEs (Watters et al. 2019) with PyTorch Lightning."""
__version__ = "0.1.0"
