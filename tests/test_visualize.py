"""Pictures: traversals set each latent to absolute values, reconstructions decode the posterior mean."""

import torch
from lightning.pytorch.utilities.parsing import AttributeDict

from sbvae.visualize import latent_order, reconstruction_grid, traversal_grid


class Readable:
    """A 3-latent "model" whose 1x1 RGB images show their latents: pixel = (z + 10) / 20."""

    hparams = AttributeDict(likelihood="gaussian")

    def encode(self, x):
        mean = 20 * x.flatten(1) - 10 + 5.0  # posterior means far from 0: 5 more than the image shows
        logvar = torch.tensor([0.0, -3.0, -1.0]).expand_as(mean)
        return mean, logvar

    def decode(self, z):
        return ((z + 10) / 20)[:, :, None, None]


def pixels(grid, rows, cols):
    """The 1x1 images of a make_grid with padding 2, as latents [rows, cols, 3]."""
    cells = grid[:, 2::3, 2::3][:, :rows, :cols]  # each 1 px image sits after 2 px of padding
    return cells.permute(1, 2, 0) * 20 - 10


def test_latent_order_is_by_mean_posterior_variance():
    assert latent_order(Readable(), torch.rand(4, 3, 1, 1)).tolist() == [1, 2, 0]


def test_traversals_set_absolute_values_and_keep_the_seed_mean_elsewhere():
    model, seed = Readable(), torch.tensor([0.55, 0.5, 0.45]).view(3, 1, 1)
    mean = model.encode(seed.unsqueeze(0))[0][0]  # 6, 5, 4
    z = pixels(traversal_grid(model, seed, torch.tensor([1, 2, 0]), steps=5, limit=2.0), 3, 5)
    values = torch.linspace(-2, 2, 5)
    for row, latent in enumerate([1, 2, 0]):
        torch.testing.assert_close(z[row, :, latent], values)  # -2..2 itself, not the seed's mean +- 2
        others = [d for d in range(3) if d != latent]
        torch.testing.assert_close(z[row][:, others], mean[others].expand(5, -1))


def test_reconstructions_decode_the_posterior_mean_under_the_inputs():
    model, x = Readable(), torch.tensor([[0.2, 0.3, 0.4], [0.6, 0.1, 0.9]]).view(2, 3, 1, 1)
    grid = reconstruction_grid(model, x)
    torch.testing.assert_close(grid[:, 2, 2::3][:, :2].T, x.flatten(1))  # top row: the inputs
    expected = ((model.encode(x)[0] + 10) / 20).clamp(0, 1)
    torch.testing.assert_close(grid[:, 5, 2::3][:, :2].T, expected)
