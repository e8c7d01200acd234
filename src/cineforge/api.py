"""The Python API, cineforge's front door::

    import cineforge

    pipe = cineforge.load_pipeline("demo")                 # or "wan2.1-t2v-1.3b", weights=DIR
    video = pipe("a red circle moves to the right", frames=17, seed=0)
    video.save("circle.mp4")                               # .mp4, .webm, .gif or .png frames
    video.frames                                           # uint8 tensor T, H, W, 3

``load_pipeline`` resolves the preset in the registry, finds its weights (``weights``, the
package's embedded copy or the Hugging Face cache), loads them on the CPU and places them
(``device``, ``offload``). A call fills the preset's defaults for every request field not
given (``Preset.request``), checks the request and runs the family's pipeline. Before any
loading or sampling, a request whose estimated memory (``Family.memory_estimate``) exceeds
what the device has available is refused (``check_memory``). The CLI is a thin shell over
this module.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cineforge.errors import CineforgeError
from cineforge.families.family import Preset, load_components
from cineforge.families.registry import get_preset
from cineforge.io.video import to_uint8_frames, write_video
from cineforge.pipelines.common import (
    FlowPipeline,
    MemoryEstimate,
    VideoRequest,
    check_vae_tile,
    format_bytes,
    prepare_image,
)
from cineforge.weights.lora import apply_loras, read_loras
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
        return write_video(Path(path), self.pixels, fps=self.fps if fps is None else fps)


Progress = Callable[[str, int, int], None]


class Pipeline:
    """A preset's loaded models, ready to generate: ``pipe(prompt, **fields) -> Video``."""

    def __init__(self, preset: Preset, runner: FlowPipeline, *, offload: str | None = None):
        self.preset, self.runner, self.offload = preset, runner, offload

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
        ``seed``, ``frame_noise_share``, ``strength``, ``guidance_until``, ``cache``,
        ``cache_threshold``, ``image``, ``guidance_2``: the low-noise expert's guidance of
        two-expert presets); the preset's defaults fill the rest.
        ``image`` (a path, a PIL image, a uint8 H, W, 3 or float 3, H, W tensor in [-1, 1]):
        the first frame (image-to-video presets); an image of another size is scaled to cover
        the output and centre-cropped, with a warning saying so.
        ``init_video`` (1, 3, T, H, W in [-1, 1]): start from it (video-to-video)."""
        return self.generate(self.request(prompt, **fields), init_video=init_video,
                             vae_tile=vae_tile, progress=progress)

    def generate(self, r: VideoRequest, *, init_video: torch.Tensor | None = None,
                 vae_tile: int | None = None, progress: Progress | None = None) -> Video:
        """Generate the video of a complete request."""
        self.preset.family.check_request(self.preset, r, init_video=init_video is not None)
        runner = self.runner
        check_vae_tile(vae_tile, runner.vae.config.spatial_ratio)
        check_memory(self.preset, r, device=runner.placement.device, dtype=runner.dtype,
                     offload=self.offload, vae_tile=vae_tile, models=(runner.dit, runner.vae))
        if r.image is not None:
            image, note = prepare_image(r.image, r.width, r.height)
            if note:
                warnings.warn(note, stacklevel=3)
            r = dataclasses.replace(r, image=image)
        video = runner(r, progress=progress, vae_tile=vae_tile, init_video=init_video)
        return Video(video[0], self.preset.fps)


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (a CUDA GPU when visible, else the CPU), "cpu", "cuda" or "cuda:N"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CineforgeError(f"unknown {{device}} {name!r}; use auto, cpu, cuda or cuda:N",
                             fields=("device",))
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise CineforgeError("{device} cuda asked for, but no CUDA GPU is visible; use cpu",
                                 fields=("device",))
        if device.index is not None and device.index >= count:
            raise CineforgeError(f"{{device}} {name!r} asked for, but {count} CUDA GPU(s) are "
                                 f"visible; use cuda:0 to cuda:{count - 1}", fields=("device",))
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes ``device`` can still allocate: on a GPU, CUDA's free memory plus what this
    process's allocator holds unused; for the CPU, the RAM the system calls available (psutil
    when installed, else /proc/meminfo, else free pages). None when unknown."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.virtual_memory().available
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    preset: Preset,
    r: VideoRequest | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offload: str | None = None,
    vae_tile: int | None = None,
    models: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> MemoryEstimate:
    """Raise a CineforgeError when ``r`` (None: the weights alone) needs more memory
    (``Family.memory_estimate``) than ``device`` has available. ``models``: the loaded (DiT,
    VAE); their weights already on the device are not counted again. Returns the estimate."""
    estimate = preset.family.memory_estimate(preset, r, dtype=dtype, device_type=device.type,
                                             offload=offload, vae_tile=vae_tile, models=models)
    resident = 0 if models is None else min(estimate.weights, _bytes_on(device, *models))
    need, free = estimate.total - resident, available_memory(device)
    if free is None or need <= free:
        return estimate
    hints = [] if r is None else ["a smaller {size} or fewer {frames}"]
    if device.type == "cuda" and offload != "block":
        hints.append("{offload} block")
    if device.type == "cuda" and dtype == torch.float32:
        hints.append("{dtype} bf16")
    if r is not None and vae_tile is None and estimate.decode > estimate.denoise:
        hints.append("{vae_tile} 256")
    what = (f"the {preset.name} weights need" if r is None
            else f"{r.width}x{r.height} with {r.frames} frames needs")
    raise CineforgeError(
        f"{what} about {format_bytes(need)} on {device} ({estimate.parts()}), but "
        f"{format_bytes(free)} is available; use {', or '.join(hints or ['a larger machine'])}",
        fields=("size", "frames", "offload", "dtype", "vae_tile"))


def _bytes_on(device: torch.device, *modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()
               if p.device.type == device.type
               and device.index in (None, p.device.index))


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
    lora: Sequence[str | Path | tuple[str | Path, float]] = (),
) -> Pipeline:
    """Load ``preset`` (a name from ``cineforge presets``) for generation.

    ``weights``: a folder in the official, diffusers or cineforge layout (default: the
    weights embedded in the package, else the preset's hub repository through the Hugging
    Face cache). ``device``: "auto" (a CUDA GPU when visible), "cpu", "cuda:N"; ``dtype``:
    "auto" (bf16 on a GPU, fp32 on a CPU), "fp32", "bf16", "fp16" or a torch dtype, for the
    DiT and text encoder (the VAE stays fp32); ``offload``: None, "model" (one model on the
    device at a time) or "block" (the DiT's blocks streamed with prefetch).

    ``lora``: LoRA files merged into the DiT, in order (they stack), each a path (scale 1)
    or a ``(path, scale)`` pair, e.g. ``lora=[("style.safetensors", 0.8), "speed.safetensors"]``;
    diffusers/PEFT, kohya and official-name (LightX2V, ComfyUI) key formats are read
    (``cineforge.weights.lora``)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if offload not in (None, *OFFLOAD):
        raise CineforgeError(f"unknown {{offload}} mode {offload!r}; use None, "
                             f"{', '.join(OFFLOAD)}", fields=("offload",))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    check_memory(preset, None, device=device, dtype=dtype, offload=offload)
    loras = read_loras(lora)  # before the weights: a bad file fails fast
    components = load_components(preset, weights, dtype=dtype)
    apply_loras(components.dit, loras,
                {name: layout.dit.keymap for name, layout in preset.family.layouts.items()})
    placement = make_placement(offload or "none", device)
    return Pipeline(preset, preset.family.make_pipeline(components, placement=placement,
                                                        dtype=dtype), offload=offload)
