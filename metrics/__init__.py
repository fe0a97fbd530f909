"""Disentanglement metrics (installed as ``sbvae.metrics``)."""
