"""CoordConv decoder (paper Appendix D; Liu et al. 2018)."""

from .deconv import DeConvDecoder


class CoordConvDecoder(DeConvDecoder):
    """The DeConv decoder with x/y coordinate channels (linspace(-1, 1) at each layer's own
    resolution, stored as buffers) appended before every deconvolution, final one included.

    Same arguments as DeConvDecoder; nothing is tiled, so it keeps the upsampling deconvs that
    the paper argues against. Each deconv gets 2 more input channels, hence
    2 * k * k * out more weights per layer than the DeConv decoder.
    """

    coord_channels = True
