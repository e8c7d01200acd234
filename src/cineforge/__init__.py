"""cineforge: an open stack for latent video diffusion."""

from cineforge.errors import CineforgeError

__version__ = "0.1.0"
__all__ = ["CineforgeError", "__version__"]
