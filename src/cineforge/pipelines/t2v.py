"""Text-to-video (and text-to-image with one frame): text states -> flow sampling -> decode.

The pipeline composes loaded models with the stateless sampler. Its stages are separate
methods so that other pipelines (image-to-video, parity tests) reuse them:

    encode_text -> initial latents -> denoise (yields steps) -> decode

Progress goes to an optional ``progress(stage, done, total)`` callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.wan_dit import pad_context
from cineforge.sampling import SolverStep, get_solver, guided_velocity, initial_noise
from cineforge.weights.offload import Resident

Progress = Callable[[str, int, int], None]


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


class TextToVideo:
    """DiT + VAE + text encoder (a ``cineforge.weights.loader.Components``) as one pipeline."""

    def __init__(self, components, *, placement=None, dtype: torch.dtype = torch.float32):
        self.dit: nn.Module = components.dit
        self.vae: nn.Module = components.vae
        self.text_encoder = components.text_encoder
        self.placement = placement or Resident("cpu")
        self.dtype = dtype

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config) -> None:
        """Raise a CineforgeError for any request the models cannot honour."""
        multiple = vae_config.spatial_ratio * dit_config.patch_size[1]
        if r.width <= 0 or r.height <= 0 or r.width % multiple or r.height % multiple:
            raise CineforgeError(
                f"size {r.width}x{r.height} is not a multiple of {multiple}; "
                f"use e.g. {_round(r.width, multiple)}x{_round(r.height, multiple)}"
            )
        t = vae_config.temporal_ratio
        if r.frames < 1 or (r.frames - 1) % t:
            lower = max(1, (r.frames - 1) // t * t + 1)
            raise CineforgeError(
                f"--frames {r.frames} is not of the form {t}k+1; use {lower} or {lower + t}"
            )
        if not r.prompt.strip():
            raise CineforgeError("the prompt is empty; describe the video to generate")
        if r.steps < 1:
            raise CineforgeError(f"--steps must be at least 1, got {r.steps}")
        if r.guidance < 0:
            raise CineforgeError(f"--guidance must be >= 0, got {r.guidance}")
        if r.shift <= 0:
            raise CineforgeError(f"--shift must be > 0, got {r.shift}")
        get_solver(r.solver)

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        c = self.vae.config
        frames = 1 + (r.frames - 1) // c.temporal_ratio
        s = c.spatial_ratio
        return (batch, c.z_dim, frames, r.height // s, r.width // s)

    def encode_text(
        self, prompts: Sequence[str], negative: str, guidance: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states of the prompts and, when guidance is on, of the negative prompt
        (one row per prompt), padded to the DiT's text length."""
        prompts = list(prompts)
        texts = prompts if guidance == 1 else [*prompts, negative]
        with self.placement.use(self.text_encoder.model):
            states = pad_context(self.text_encoder.encode(texts).states, self.dit.config.text_len)
        cond = states[: len(prompts)]
        if guidance == 1:
            return cond, None
        return cond, states[len(prompts) :].expand_as(cond)

    def denoise(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        noise: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        shift: float,
        solver: str = "unipc",
    ) -> Iterator[SolverStep]:
        """Yield every solver step from ``noise`` (float32 latents) to the clean latents."""
        chosen = get_solver(solver)
        sigmas, times = chosen.schedule(steps, shift)
        with self.placement.use(self.dit) as dit:
            device = next(dit.parameters()).device
            cond = cond.to(device, self.dtype)
            uncond = cond if uncond is None else uncond.to(device, self.dtype)

            def model(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return dit(x.to(self.dtype), t, context).float()

            velocity = guided_velocity(model, {"context": cond}, {"context": uncond}, guidance)
            yield from chosen.steps(velocity, noise.to(device), sigmas.to(device), times.to(device))

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] (B, 3, T, H, W) on the CPU; ``tile`` in pixels, or None."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            device = next(vae.parameters()).device
            cells = None if tile is None else max(2, tile // vae.config.spatial_ratio)
            return vae.decode(latents.to(device, torch.float32), tile=cells).cpu()

    def __call__(
        self,
        r: VideoRequest,
        *,
        prompts: Sequence[str] | None = None,
        progress: Progress | None = None,
        vae_tile: int | None = None,
    ) -> torch.Tensor:
        """Video(s) in [-1, 1], ``B, 3, T, H, W``: one per prompt (default: ``r.prompt``),
        all with the settings of ``r``; noise for the batch comes from ``r.seed``."""
        prompts = [r.prompt] if prompts is None else list(prompts)
        for p in prompts:
            self.check_request(dataclasses.replace(r, prompt=p), self.dit.config, self.vae.config)
        report = progress or (lambda stage, done, total: None)
        cond, uncond = self.encode_text(prompts, r.negative, r.guidance)
        generator = torch.Generator().manual_seed(r.seed)
        latents = initial_noise(self.latent_shape(r, len(prompts)), generator)
        report("denoise", 0, r.steps)
        steps = self.denoise(
            cond,
            uncond,
            latents,
            steps=r.steps,
            guidance=r.guidance,
            shift=r.shift,
            solver=r.solver,
        )
        for step in steps:
            latents = step.x
            report("denoise", step.index + 1, step.total)
        report("decode", 0, 1)
        video = self.decode(latents, tile=vae_tile)
        report("decode", 1, 1)
        return video


def _round(n: int, multiple: int) -> int:
    return max(multiple, round(n / multiple) * multiple)
