"""What every text-to-video pipeline shares: the request, its checks and the stage order.

    conditions (text -> DiT inputs) -> initial latents -> denoise (yields steps) -> decode

Video-to-video (SDEdit, Meng et al. 2022) is the same loop started part-way: with an
``init_video`` and ``strength`` s < 1 the video is encoded, noised to the schedule's sigma
after its first ``steps - int(steps * s)`` steps, and only the remaining steps run (the
steps are counted as in diffusers' video-to-video pipelines).

Image-to-video is the same loop with a first frame: the request's ``image`` (a path, a PIL
image or a tensor; None: text-to-video) is brought to the request's size by
``prepare_image`` and a family that has image-to-video (``FlowPipeline.image_to_video``)
builds its conditioning from it; the others refuse it before loading anything.

``FlowPipeline`` runs the stages; a model family says only how it builds its conditioning
(``conditions``), what its latents look like (``latent_shape``, ``initial_latents``) and how
it decodes. The DiT is called as ``dit(x, t, **conditioning)``; classifier-free guidance,
the solver and offloading wrap that call, never the loop. Progress goes to an optional
``progress(stage, done, total)`` callback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.sampling import (
    SolverStep,
    Velocity,
    get_solver,
    guided_velocity,
    initial_noise,
    solver_steps,
)
from cineforge.sampling.caching import CACHES, MagnitudeLog, make_cache
from cineforge.sampling.guidance import batchable
from cineforge.weights.offload import Resident

Progress = Callable[[str, int, int], None]
Conditioning = dict[str, Any]  # keyword arguments of the DiT besides x and t


@dataclass(frozen=True)
class VideoRequest:
    prompt: str
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    shift: float
    negative: str = ""
    solver: str = "unipc"
    seed: int = 0
    frame_noise_share: float = 0.0  # share of the initial noise common to all frames
    strength: float = 1.0  # video-to-video: share of the steps run from the noised init video
    guidance_until: float = 1.0  # share of the (first) steps run with guidance; then cond only
    cache: str = "none"  # step cache: "none", "tea" or "mag" (sampling.caching)
    cache_threshold: float = 0.0  # the cache's skip threshold; 0 never skips
    cache_magnitudes: tuple[tuple[float, float], ...] = ()  # MagCache: (t, mean|v|) of a run
    # image-to-video: the first frame (a path, a PIL image, or a uint8 / float tensor as
    # ``prepare_image`` takes it); None: text-to-video
    image: Any = field(default=None, compare=False, repr=False)
    guidance_2: float | None = None  # two-expert models (Wan 2.2 A14B): the low-noise expert's


FLOAT_FIELDS = ("guidance", "shift", "frame_noise_share", "strength", "guidance_until",
                "cache_threshold")
SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes (negatives wrap)


def check_request(r: VideoRequest, *, multiple: int, temporal_ratio: int) -> None:
    """Raise a CineforgeError for a request that models with this pixel ``multiple`` (VAE
    ratio x DiT patch) and VAE ``temporal_ratio`` cannot honour."""
    for name in FLOAT_FIELDS:  # nan passes every comparison below
        value = getattr(r, name)
        if not math.isfinite(value):
            raise CineforgeError(f"{{{name}}} must be a finite number, got {value}",
                                 fields=(name,))
    if not SEEDS[0] <= r.seed <= SEEDS[1]:
        raise CineforgeError(f"{{seed}} {r.seed} does not fit in 64 bits; use a seed in "
                             "[0, 2**64)", fields=("seed",))
    if r.width <= 0 or r.height <= 0 or r.width % multiple or r.height % multiple:
        raise CineforgeError(
            f"{{size}} {r.width}x{r.height} is not a multiple of {multiple}; "
            f"use e.g. {round_to(r.width, multiple)}x{round_to(r.height, multiple)}",
            fields=("size",),
        )
    t = temporal_ratio
    if r.frames < 1 or (r.frames - 1) % t:
        lower = max(1, (r.frames - 1) // t * t + 1)
        raise CineforgeError(
            f"{{frames}} {r.frames} is not of the form {t}k+1; use {lower} or {lower + t}",
            fields=("frames",),
        )
    if not r.prompt.strip():
        raise CineforgeError("the prompt is empty; describe the video to generate")
    if r.steps < 1:
        raise CineforgeError(f"{{steps}} must be at least 1, got {r.steps}", fields=("steps",))
    if r.guidance < 0:
        raise CineforgeError(f"{{guidance}} must be >= 0, got {r.guidance}", fields=("guidance",))
    if r.guidance_2 is not None and not (math.isfinite(r.guidance_2) and r.guidance_2 >= 0):
        raise CineforgeError(f"{{guidance_2}} must be a number >= 0, got {r.guidance_2}",
                             fields=("guidance_2",))
    if not 0 <= r.frame_noise_share < 1:
        raise CineforgeError(f"{{frame_noise_share}} must be in [0, 1), got {r.frame_noise_share}",
                             fields=("frame_noise_share",))
    if r.shift <= 0:
        raise CineforgeError(f"{{shift}} must be > 0, got {r.shift}", fields=("shift",))
    if not 0 < r.strength <= 1 or int(r.steps * r.strength) < 1:
        raise CineforgeError(
            f"{{strength}} {r.strength} with {{steps}} {r.steps} runs no step; use a strength in "
            "(0, 1] with steps * strength >= 1", fields=("strength", "steps")
        )
    get_solver(r.solver)
    check_speedups(r)
    if r.image is not None:
        check_image(r.image)


def check_speedups(r: VideoRequest) -> None:
    """Guidance truncation and step caching (``guidance_until``, ``cache*``)."""
    if not 0 <= r.guidance_until <= 1:
        raise CineforgeError(f"{{guidance_until}} must be in [0, 1] (the share of the steps "
                             f"with guidance), got {r.guidance_until}", fields=("guidance_until",))
    if r.cache not in CACHES:
        raise CineforgeError(f"unknown {{cache}} {r.cache!r}; use one of {', '.join(CACHES)}",
                             fields=("cache",))
    if r.cache_threshold < 0:
        raise CineforgeError(f"{{cache_threshold}} must be >= 0 (0: no skipping), got "
                             f"{r.cache_threshold}", fields=("cache_threshold",))
    if r.cache == "mag" and len(r.cache_magnitudes) < 2:
        raise CineforgeError("{cache} mag needs a magnitude calibration of the model, which "
                             "this preset lacks; use {cache} tea", fields=("cache",))


def check_image(image: Any) -> None:
    """Raise a CineforgeError unless ``image`` is something ``prepare_image`` reads."""
    from PIL import Image

    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise CineforgeError(f"{{image}} {image} is not a file; give the path of the first "
                                 "frame (.png, .jpg, ...)", fields=("image",))
    elif isinstance(image, torch.Tensor):
        _image_tensor(image)
    elif not isinstance(image, Image.Image):
        raise CineforgeError(f"{{image}} must be a path, a PIL image or a tensor, got "
                             f"{type(image).__name__}", fields=("image",))


def _image_tensor(image: torch.Tensor) -> torch.Tensor:
    """A tensor image as 1, 3, H, W float in [-1, 1]: uint8 (H, W, 3 or 3, H, W, values
    0..255) or float (3, H, W or 1, 3, H, W, values in [-1, 1])."""
    if image.dtype == torch.uint8:
        if image.ndim == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
            image = image.permute(2, 0, 1)
        if image.ndim == 3 and image.shape[0] == 3:
            return image[None].float() / 127.5 - 1
    elif image.is_floating_point():
        if image.ndim == 3:
            image = image[None]
        if image.ndim == 4 and image.shape[:2] == (1, 3):
            if not torch.isfinite(image).all() or image.abs().max() > 1 + 1e-6:
                raise CineforgeError("a float {image} tensor must hold values in [-1, 1]",
                                     fields=("image",))
            return image.float()
    raise CineforgeError(f"{{image}} tensor of shape {tuple(image.shape)} and {image.dtype}: use "
                         "uint8 H, W, 3 (or 3, H, W) or float 3, H, W in [-1, 1]",
                         fields=("image",))


def require_image(r: VideoRequest) -> None:
    """An image-to-video preset's check: the request gives its first frame."""
    if r.image is None:
        raise CineforgeError("this preset is image-to-video: give the first frame as "
                             "{image}", fields=("image",))


def prepare_image(image: Any, width: int, height: int) -> tuple[torch.Tensor, str | None]:
    """The first frame at ``width`` x ``height``: ``(1, 3, H, W float32 in [-1, 1], note)``.

    An image of another size is scaled, keeping its aspect, to cover the frame and
    centre-cropped (Wan 2.2's ``textimage2video``: scale ``max(W / w, H / h)``, Lanczos for
    files and PIL images, antialiased bicubic for tensors); ``note`` then says so in one line
    (None when the size was already right)."""
    from PIL import Image

    check_image(image)
    if isinstance(image, str | Path):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except OSError as error:  # Pillow: UnidentifiedImageError, truncated file
            raise CineforgeError(f"{{image}} {image} is not a readable image ({error})",
                                 fields=("image",)) from None
    if isinstance(image, Image.Image):
        w, h = image.size
        if (w, h) != (width, height):
            scale = max(width / w, height / h)
            size = (max(width, round(w * scale)), max(height, round(h * scale)))
            image = image.convert("RGB").resize(size, Image.LANCZOS)
            left, top = (size[0] - width) // 2, (size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        tensor = pixels.permute(2, 0, 1)[None].float() / 127.5 - 1
    else:
        tensor = _image_tensor(image)
        h, w = tensor.shape[-2:]
        if (w, h) != (width, height):
            scale = max(width / w, height / h)
            size = (max(height, round(h * scale)), max(width, round(w * scale)))
            tensor = torch.nn.functional.interpolate(tensor, size=size, mode="bicubic",
                                                     antialias=True, align_corners=False)
            top, left = (size[0] - height) // 2, (size[1] - width) // 2
            tensor = tensor[..., top : top + height, left : left + width].clamp(-1, 1)
    note = None if (w, h) == (width, height) else (
        f"the image is {w}x{h}: scaled to cover {width}x{height} and centre-cropped")
    return tensor.contiguous(), note


def round_to(n: int, multiple: int) -> int:
    return max(multiple, round(n / multiple) * multiple)


def check_vae_tile(tile: int | None, spatial_ratio: int) -> None:
    """Raise a CineforgeError unless ``tile`` (pixels; None: no tiling) is a usable decoding
    tile for a VAE of this ``spatial_ratio``: whole latent cells, at least two of them."""
    if tile is None:
        return
    low = 2 * spatial_ratio
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < low or tile % spatial_ratio:
        near = max(low, round_to(tile, spatial_ratio)) if isinstance(tile, int | float) else low
        raise CineforgeError(
            f"{{vae_tile}} {tile} is not a usable tile size: use a multiple of the VAE's "
            f"{spatial_ratio} pixels, at least {low}, e.g. {near}", fields=("vae_tile",))


# ----------------------------------------------------------------------------- memory
# What a request needs on its device at the peak, from the model configs, before loading:
#
#   weights on the device (by offload mode)
#   + the latents and the solver's state (LATENT_COPIES float32 copies)
#   + the larger of: the DiT's activations in one block (tokens x batch x the widths alive at
#     once: x, its norm, q, k, v and the attention output, or x, its norm and the FFN's hidden
#     layer before and after its activation), and the decode (the float32 video, on a CPU also
#     the two float copies of its conversion to uint8, plus DECODER_FLOATS per pixel of a
#     frame or tile for the decoder's full-resolution features).
#
# Attention is taken to be memory-efficient (SDPA's flash / efficient kernels, on CPU too: no
# L x L scores); text encoders are not counted (they run first, and offload moves them out).
# It estimates the unavoidable part, to refuse at once what cannot fit, not a promise that
# what passes fits. Measured on CPU (fp32): a Wan block's peak is within 15% above the DiT
# term; decoders hold 2,000 (the demo VAE, 33 frames) to 4,000 (Wan 2.1) and 13,000
# (HunyuanVideo) floats per output pixel, DECODER_FLOATS is the floor of these.
LATENT_COPIES = 10
DECODER_FLOATS = 1024


@dataclass(frozen=True)
class ModelSizes:
    """What the memory estimate needs of a preset's models (``families.family.model_sizes``)."""

    dit_bytes: int  # DiT weights in the run's dtype
    dit_blocks_bytes: int  # of which its repeated blocks (streamed under block offload)
    dit_block_bytes: int  # its largest block
    vae_bytes: int  # VAE weights (fp32)
    dtype_bytes: int  # bytes of one DiT activation
    hidden: int  # the DiT's token width
    ffn: int  # the widest projection of a token in a block (the FFN's hidden layer)
    latent_channels: int
    patch: tuple[int, int, int]
    spatial_ratio: int
    temporal_ratio: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs on its device at the peak (see ``estimate_memory``)."""

    weights: int
    latents: int
    denoise: int  # the DiT's activations
    decode: int

    @property
    def total(self) -> int:
        return self.weights + self.latents + max(self.denoise, self.decode)

    def parts(self) -> str:
        parts = {"weights": self.weights, "latents": self.latents,
                 "DiT activations": self.denoise, "decode": self.decode}
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items() if n)


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e6:.2f} MB"


def estimate_memory(
    r: VideoRequest | None,
    sizes: ModelSizes,
    *,
    device_type: str = "cpu",
    offload: str | None = None,
    vae_tile: int | None = None,
) -> MemoryEstimate:
    """The memory ``r`` needs on a ``device_type`` ("cpu", "cuda") device with this
    ``offload`` (None, "model", "block"; a CPU holds every model anyway) and ``vae_tile``;
    ``r`` None: the weights alone."""
    z = sizes
    if device_type == "cpu" or offload is None:
        weights = z.dit_bytes + z.vae_bytes
    elif offload == "model":
        weights = max(z.dit_bytes, z.vae_bytes)
    else:  # "block": the DiT's other weights and two blocks (one running, one prefetched)
        weights = max(z.dit_bytes - z.dit_blocks_bytes + 2 * z.dit_block_bytes, z.vae_bytes)
    if r is None:
        return MemoryEstimate(weights, 0, 0, 0)
    batch = 1 if r.guidance == 1 else 2  # cond and uncond in one batch
    frames = 1 + (r.frames - 1) // z.temporal_ratio
    rows, columns = r.height // z.spatial_ratio, r.width // z.spatial_ratio
    pt, ph, pw = z.patch
    tokens = math.ceil(frames / pt) * math.ceil(rows / ph) * math.ceil(columns / pw)
    widths = max(7 * z.hidden, 2 * z.hidden + 2 * z.ffn)
    pixels = 3 * r.frames * r.height * r.width
    area = r.height * r.width if vae_tile is None else min(r.height * r.width, vae_tile**2)
    return MemoryEstimate(
        weights=weights,
        latents=LATENT_COPIES * z.latent_channels * frames * rows * columns * 4,
        denoise=batch * tokens * widths * z.dtype_bytes,
        decode=pixels * 4 * (3 if device_type == "cpu" else 1) + DECODER_FLOATS * area * 4,
    )


class FlowPipeline:
    """DiT + VAE + text encoder(s) (a ``cineforge.families.family.Components``), run in the
    shared stage order. Subclasses implement ``check``, ``conditions``, ``latent_shape`` and
    ``decode``; those with video-to-video also ``encode_video`` (and set the flag below)."""

    video_to_video: bool = False  # whether ``encode_video`` exists (init_video is honoured)
    image_to_video: bool = False  # whether ``conditions`` reads the request's ``image``

    def __init__(self, components, *, placement=None, dtype: torch.dtype = torch.float32):
        self.dit: nn.Module = components.dit
        self.vae: nn.Module = components.vae
        self.text_encoder = components.text_encoder
        self.placement = placement or Resident("cpu")
        self.dtype = dtype

    # --- what a family defines -------------------------------------------------------
    def check(self, r: VideoRequest) -> None:
        raise NotImplementedError

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        """DiT inputs for the prompts and, when ``r.guidance`` is on, for the negative."""
        raise NotImplementedError

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Float32 latents of ``video`` (B, 3, T, H, W in [-1, 1]) as the DiT denoises them."""
        raise CineforgeError(f"{type(self).__name__} has no video-to-video; use strength 1")

    def initial_latents(self, r: VideoRequest, batch: int) -> torch.Tensor:
        """Standard normal float32 latents from ``r.seed`` (``r.frame_noise_share`` of their
        variance common to all frames)."""
        generator = torch.Generator().manual_seed(r.seed)
        return initial_noise(self.latent_shape(r, batch), generator,
                             frame_share=r.frame_noise_share)

    def fresh_noise(self, r: VideoRequest) -> Callable[[tuple[int, ...]], torch.Tensor]:
        """``noise(shape)``: fresh draws for solvers that re-noise every step (``flash``), from
        their own generator seeded by ``r.seed`` (independent of the initial noise), with the
        request's frame noise share."""
        state = np.random.SeedSequence([r.seed % 2**64, 1]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return lambda shape: initial_noise(shape, generator, frame_share=r.frame_noise_share)

    def sample_options(self, r: VideoRequest) -> dict[str, Any]:
        """Keyword arguments of ``sample`` a family adds from the request (two-expert models:
        the second expert's guidance); none by default."""
        return {}

    def sampled_first_frame(self, r: VideoRequest) -> torch.Tensor:
        """Latents (1, C, 1, h, w) of ``r.image`` (scaled and centre-cropped to the request's
        size) as a posterior draw of the VAE from ``first_frame_generator(r)`` (the
        image-to-video releases that sample it, not its mean)."""
        frame, _ = prepare_image(r.image, r.width, r.height)
        with self.placement.use(self.vae) as vae, torch.no_grad():
            video = frame[:, :, None].to(next(vae.parameters()).device, torch.float32)
            return vae.encode(video, sample=True,
                              generator=self.first_frame_generator(r)).float().cpu()

    def first_frame_generator(self, r: VideoRequest) -> torch.Generator:
        """The first-frame draw's own generator, seeded by ``r.seed`` (independent of the
        initial noise)."""
        seed = np.random.SeedSequence([r.seed % 2**64, 2]).generate_state(1, np.uint32)[0]
        return torch.Generator().manual_seed(int(seed))

    def schedule(self, steps: int, shift: float, solver: str) -> tuple[torch.Tensor, ...]:
        """``(sigmas, times)`` the solver walks (its own schedule by default)."""
        return get_solver(solver).schedule(steps, shift)

    # --- the shared stages -----------------------------------------------------------
    def sample(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        noise: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        shift: float,
        solver: str = "unipc",
        skip: int = 0,
        guidance_until: float = 1.0,
        cache: Callable[[Velocity], Velocity] | None = None,
        fresh_noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
    ) -> Iterator[SolverStep]:
        """Yield every solver step from ``noise`` (float32 latents) to the clean latents;
        the DiT sees ``dit(x, t, **cond)`` (and ``**uncond`` under guidance: in one batch when
        their shapes allow). ``skip``: start after that many steps of the schedule, from
        ``noise`` at its sigma there. ``guidance_until``: share of the steps run (the first
        ones) with guidance, the others call the DiT with ``cond`` only. ``cache``: wraps the
        guided velocity (``sampling.caching.make_cache``). ``fresh_noise``: draws for solvers
        that re-noise every step (``self.fresh_noise``)."""
        chosen = get_solver(solver)
        sigmas, times = self.schedule(steps, shift, solver)
        sigmas, times = sigmas[skip:], times[skip:]
        guided = math.ceil(guidance_until * len(times) - 1e-9)  # steps with guidance
        until = None if guided >= len(times) else (
            float(times[guided - 1]) if guided else math.inf)
        with self.placement.use(self.dit) as dit:
            device = next(dit.parameters()).device
            cond = _to(cond, device, self.dtype)
            uncond = cond if uncond is None else _to(uncond, device, self.dtype)

            def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
                with torch.no_grad():
                    return dit(x.to(self.dtype), t, **kwargs).float()

            velocity = guided_velocity(model, cond, uncond, guidance,
                                       batched=batchable(cond, uncond), until=until)
            if cache is not None:
                velocity = cache(velocity)
            yield from solver_steps(chosen, velocity, noise.to(device), sigmas.to(device),
                                    times.to(device), noise=fresh_noise)

    def __call__(
        self,
        r: VideoRequest,
        *,
        prompts: Sequence[str] | None = None,
        progress: Progress | None = None,
        vae_tile: int | None = None,
        init_video: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Video(s) in [-1, 1], ``B, 3, T, H, W``: one per prompt (default: ``r.prompt``),
        all with the settings of ``r``; noise for the batch comes from ``r.seed``. With
        ``init_video`` (one video per prompt, ``B, 3, T, H, W`` in [-1, 1]) the sampling starts
        from it, noised according to ``r.strength`` (video-to-video)."""
        prompts = [r.prompt] if prompts is None else list(prompts)
        for p in prompts:
            self.check(dataclasses.replace(r, prompt=p))
        if init_video is None and r.strength != 1:
            raise CineforgeError(f"{{strength}} {r.strength} needs an init video; give one or "
                                 "use 1", fields=("strength",))
        report = progress or (lambda stage, done, total: None)
        cond, uncond = self.conditions(prompts, r)
        latents = self.initial_latents(r, len(prompts))
        skip = r.steps - int(r.steps * r.strength)
        if init_video is not None:
            latents = self.noised_init(init_video, latents, r, skip)
        report("denoise", 0, r.steps - skip)
        steps = self.sample(
            cond, uncond, latents, steps=r.steps, guidance=r.guidance, shift=r.shift,
            solver=r.solver, skip=skip, guidance_until=r.guidance_until,
            cache=make_cache(r.cache, r.cache_threshold, r.cache_magnitudes),
            fresh_noise=self.fresh_noise(r), **self.sample_options(r),
        )
        for step in steps:
            latents = step.x
            if not torch.isfinite(latents).all():  # else a black (nan) or white (inf) file
                raise CineforgeError(
                    f"sampling produced non-finite values at step {step.index + 1} of "
                    f"{step.total}; the model diverged: lower {{guidance}} or {{shift}}, check "
                    "the weights, or use {dtype} fp32 or bf16 (fp16 overflows)",
                    fields=("guidance", "shift", "dtype"))
            report("denoise", step.index + 1, step.total)
        report("decode", 0, 1)
        video = self.decode(latents, tile=vae_tile)
        if not torch.isfinite(video).all():
            raise CineforgeError("the VAE decoded non-finite values from finite latents; check "
                                 "the VAE weights")
        report("decode", 1, 1)
        return video

    def calibrate_magnitudes(self, r: VideoRequest) -> tuple[tuple[float, float], ...]:
        """MagCache's calibration: ``(t, mean|v|)`` of the guided velocity at every step of
        one uncached run of ``r`` (store it as the preset's ``SamplerDefaults.magnitudes``)."""
        self.check(r)
        logs: list[MagnitudeLog] = []

        def record(velocity: Velocity) -> Velocity:
            logs.append(MagnitudeLog(velocity))
            return logs[-1]

        cond, uncond = self.conditions([r.prompt], r)
        for _ in self.sample(cond, uncond, self.initial_latents(r, 1), steps=r.steps,
                             guidance=r.guidance, shift=r.shift, solver=r.solver,
                             guidance_until=r.guidance_until, cache=record,
                             fresh_noise=self.fresh_noise(r)):
            pass
        return tuple((round(t, 5), round(m, 5)) for t, m in logs[0].records)

    def noised_init(
        self, video: torch.Tensor, noise: torch.Tensor, r: VideoRequest, skip: int
    ) -> torch.Tensor:
        """``(1 - sigma) x0 + sigma noise`` with ``x0`` the latents of ``video`` and sigma the
        schedule's after ``skip`` steps."""
        want = (len(noise), 3, r.frames, r.height, r.width)
        if tuple(video.shape) != want:
            raise CineforgeError(
                f"init video has shape {tuple(video.shape)}, expected {want} (one B, 3, T, H, W "
                "video in [-1, 1] per prompt, at the request's size and frame count)"
            )
        x0 = self.encode_video(video).float()
        sigma = self.schedule(r.steps, r.shift, r.solver)[0][skip].item()
        return (1 - sigma) * x0 + sigma * noise


def _to(values: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> Conditioning:
    """Floating tensors to ``device`` and ``dtype``, other tensors to ``device``, the rest as is."""
    out = {}
    for name, v in values.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype) if v.is_floating_point() else v.to(device)
        out[name] = v
    return out
