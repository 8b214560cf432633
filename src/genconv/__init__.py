"""genconv: learning hierarchical convolutional representations.

Convolutional DBNs (Lee et al. 2009), Deconvolutional Networks (Zeiler et al. 2010),
ConvNets (Jarrett et al. 2009), generative ConvNets / FRAME (Lu et al.) and convolutional
autoencoders (Riemens 2015), on one shared set of building blocks (``genconv.ops``).
"""
__version__ = "0.1.0"

from genconv.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
