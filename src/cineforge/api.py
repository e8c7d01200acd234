"""The Python API, cineforge's front door::

    import cineforge

    pipe = cineforge.load_pipeline("demo")                 # or "wan2.1-t2v-1.3b", weights=DIR
    video = pipe("a red circle moves to the right", frames=17, seed=0)
    video.save("circle.mp4")                               # .mp4, .webm, .gif or .png frames
    video.frames                                           # uint8 tensor T, H, W, 3

``load_pipeline`` resolves the preset in the registry, finds its weights (``weights``, the
package's embedded copy or the Hugging Face cache), loads them on the CPU and places them
(``device``, ``offload``). A call fills the preset's defaults for every request field not
given (``Preset.request``), checks the request and runs the family's pipeline. The CLI is a
thin shell over this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cineforge.errors import CineforgeError
from cineforge.families.family import Preset, load_components
from cineforge.families.registry import get_preset
from cineforge.io.video import to_uint8_frames, write_video
from cineforge.pipelines.common import FlowPipeline, VideoRequest
from cineforge.weights.offload import make_placement

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OFFLOAD = ("model", "block")


@dataclass(frozen=True)
class Video:
    """A generated video: ``pixels`` (3, T, H, W, float in [-1, 1]) at ``fps``."""

    pixels: torch.Tensor
    fps: int

    @property
    def frames(self) -> torch.Tensor:
        """uint8 frames, T, H, W, 3."""
        return torch.from_numpy(self.numpy())

    def numpy(self) -> np.ndarray:
        return to_uint8_frames(self.pixels)

    def save(self, path: str | Path, *, fps: int | None = None) -> list[Path]:
        """Write the video (``.mp4``, ``.webm``, ``.gif``, ``.png``: one file per frame);
        returns the written paths."""
        return write_video(Path(path), self.pixels, fps=fps or self.fps)


Progress = Callable[[str, int, int], None]


class Pipeline:
    """A preset's loaded models, ready to generate: ``pipe(prompt, **fields) -> Video``."""

    def __init__(self, preset: Preset, runner: FlowPipeline) -> None:
        self.preset, self.runner = preset, runner

    def request(self, prompt: str, **fields: Any) -> VideoRequest:
        """The checked request for ``prompt`` with the preset's defaults under ``fields``."""
        r = self.preset.request(prompt, **fields)
        self.preset.family.check_request(self.preset, r)
        return r

    def __call__(
        self,
        prompt: str,
        *,
        init_video: torch.Tensor | None = None,
        vae_tile: int | None = None,
        progress: Progress | None = None,
        **fields: Any,
    ) -> Video:
        """Generate one video. ``fields``: any ``VideoRequest`` field (``frames``,
        ``width``, ``height``, ``steps``, ``guidance``, ``shift``, ``negative``, ``solver``,
        ``seed``, ``frame_noise_share``, ``strength``); the preset's defaults fill the rest.
        ``init_video`` (1, 3, T, H, W in [-1, 1]): start from it (video-to-video)."""
        return self.generate(self.request(prompt, **fields), init_video=init_video,
                             vae_tile=vae_tile, progress=progress)

    def generate(self, r: VideoRequest, *, init_video: torch.Tensor | None = None,
                 vae_tile: int | None = None, progress: Progress | None = None) -> Video:
        """Generate the video of a complete request."""
        self.preset.family.check_request(self.preset, r, init_video=init_video is not None)
        if vae_tile is not None and vae_tile < 1:
            raise CineforgeError(f"{{vae_tile}} must be a positive number of pixels, got "
                                 f"{vae_tile}", fields=("vae_tile",))
        video = self.runner(r, progress=progress, vae_tile=vae_tile, init_video=init_video)
        return Video(video[0], self.preset.fps)


def resolve_device(name: str | torch.device) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CineforgeError(f"unknown {{device}} {name!r}; use cpu, cuda or cuda:N",
                             fields=("device",)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CineforgeError("{device} cuda asked for, but no CUDA GPU is visible; use cpu",
                             fields=("device",))
    return device


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":  # bf16 matmul on CPU is ~500x slower than fp32 (DESIGN.md)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise CineforgeError(f"unknown {{dtype}} {name!r}; use auto, {', '.join(DTYPES)}",
                             fields=("dtype",))
    return DTYPES[name]


def load_pipeline(
    preset: str | Preset = "demo",
    weights: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    offload: str | None = None,
) -> Pipeline:
    """Load ``preset`` (a name from ``cineforge presets``) for generation.

    ``weights``: a folder in the official, diffusers or cineforge layout (default: the
    weights embedded in the package, else the preset's hub repository through the Hugging
    Face cache). ``device``: "auto" (a CUDA GPU when visible), "cpu", "cuda:N"; ``dtype``:
    "auto" (bf16 on a GPU, fp32 on a CPU), "fp32", "bf16", "fp16" or a torch dtype, for the
    DiT and text encoder (the VAE stays fp32); ``offload``: None, "model" (one model on the
    device at a time) or "block" (the DiT's blocks streamed with prefetch)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if offload not in (None, *OFFLOAD):
        raise CineforgeError(f"unknown {{offload}} mode {offload!r}; use None, "
                             f"{', '.join(OFFLOAD)}", fields=("offload",))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    components = load_components(preset, weights, dtype=dtype)
    placement = make_placement(offload or "none", device)
    return Pipeline(preset, preset.family.make_pipeline(components, placement=placement,
                                                        dtype=dtype))
