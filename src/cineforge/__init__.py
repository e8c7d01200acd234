"""cineforge: an open stack for latent video diffusion.

    pipe = cineforge.load_pipeline("demo")
    pipe("a red circle moves to the right", seed=0).save("circle.mp4")

The API (``cineforge.api``) is imported on first use, so ``import cineforge`` stays cheap.
"""

from cineforge.errors import CineforgeError

__version__ = "0.1.0"
__all__ = ["CineforgeError", "Pipeline", "Video", "__version__", "load_pipeline"]
_API = ("Pipeline", "Video", "load_pipeline")


def __getattr__(name: str):
    if name in _API:
        from cineforge import api

        return getattr(api, name)
    raise AttributeError(f"module 'cineforge' has no attribute {name!r}")
