"""Plain nn.Modules of the paper: encoder, three decoders, FactorVAE discriminator."""

from .coordconv import CoordConvDecoder
from .coords import AppendCoords, coordinate_grid
from .deconv import DeConvDecoder
from .discriminator import Discriminator
from .encoder import ConvEncoder
from .init import init_weights
from .spatial_broadcast import SpatialBroadcastDecoder

# Name -> class, for configs that pick the decoder by string.
DECODERS = {
    "deconv": DeConvDecoder,
    "spatial_broadcast": SpatialBroadcastDecoder,
    "coordconv": CoordConvDecoder,
}

__all__ = [
    "AppendCoords",
    "ConvEncoder",
    "CoordConvDecoder",
    "DECODERS",
    "DeConvDecoder",
    "Discriminator",
    "SpatialBroadcastDecoder",
    "coordinate_grid",
    "init_weights",
]
