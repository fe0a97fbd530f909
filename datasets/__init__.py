"""Ground-truth datasets (installed as ``sbvae.datasets``).

    from sbvae.datasets import load, available
    data = load("colored-sprites", image_size=64)      # a GroundTruthData
    factors = data.sample_factors(16, generator)        # LongTensor [16, 8] on generator.device
    images = data.render(factors.to(device), gen)       # FloatTensor [16, 3, 64, 64] on device

| name | channels | factors (class counts) | source |
|---|---|---|---|
| dsprites | 1 | shape 3, scale 6, orientation 40, posX 32, posY 32 | official npz or procedural |
| colored-sprites | 3 | dsprites' 5 + hue, saturation, value (color_bins each, default 10) | as dsprites |
| circles-xy | 3 | x, y (grid cells each, default 32) | procedural |
| circles-xh | 3 | x, hue | procedural |
| circles-rg | 3 | red, green | procedural |
| circles-xyh-small / -tiny | 3 | x, y, hue | procedural |
| shapes3d | 3 | floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4, orientation 15 | 3dshapes.h5 |
| chairs | 1 | index (no ground truth) | a folder of images |

Continuous factors (colour of colored-sprites, everything in circles) are
classes of equal bins over their range; ``render(factors, generator)`` draws
the value uniformly inside the bin, ``render(factors)`` uses the bin centre.
Files are looked up in the data directory: option ``data_dir``, else
$SBVAE_DATA, else ~/.cache/sbvae.  ``sbvae-data list`` shows everything.
"""

from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.chairs import Chairs
from sbvae.datasets.circles import Circles
from sbvae.datasets.common import data_dir
from sbvae.datasets.registry import available, load
from sbvae.datasets.shapes3d import Shapes3D
from sbvae.datasets.sprites import ColoredSprites, DSprites

__all__ = [
    "GroundTruthData",
    "DataError",
    "load",
    "available",
    "data_dir",
    "DSprites",
    "ColoredSprites",
    "Circles",
    "Shapes3D",
    "Chairs",
]
