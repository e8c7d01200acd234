"""Kandinsky 5 text-to-video and text-to-image (one frame) through one pipeline.

Kandinsky's pieces of the shared stages (``cineforge.pipelines.common.FlowPipeline``):

- conditioning: Qwen2.5-VL token states of the templated prompt (with their padding mask)
  and CLIP's pooled vector, for the prompt and, under guidance, the negative prompt; both
  cut to the longest real text of the two (padding is masked anyway);
- RoPE scale: a video model at 480..854 px on both sides uses (1, 2, 2), other sizes
  (1, 3.16, 3.16) (the release's 512 px "sd" and 1024 px "hd" configs; diffusers'
  ``_get_scale_factor``); an image model keeps its config's (1, 1, 1);
- noise: drawn channel-last (B, T, H, W, C) as the release and diffusers draw it, so a seed
  gives diffusers' noise;
- schedule: ``"release"`` walks ``shift_time(linspace(1, 0, steps + 1), shift)`` with Euler,
  as the release's ``generate`` does; ``"diffusers"`` uses the solver's own schedule
  (for Euler, diffusers' ``FlowMatchEulerDiscreteScheduler``, which ends nearer 0);
- latents are the VAE's scaled latents (``z * scaling_factor``): the HunyuanVideo VAE for
  video, the FLUX VAE (no shift) for images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.hunyuan_vae import HunyuanTiling, HunyuanVAE
from cineforge.models.attention import get_attention_backend
from cineforge.models.nabla import NablaAttention
from cineforge.models.text_encoders import TextStates
from cineforge.pipelines.common import Conditioning, FlowPipeline, VideoRequest, check_request
from cineforge.sampling import get_solver, shift_time

SCHEDULES = ("release", "diffusers")
SD_SCALE, HD_SCALE = (1.0, 2.0, 2.0), (1.0, 3.16, 3.16)


def video_rope_scale(height: int, width: int) -> tuple[float, float, float]:
    """RoPE scale of the video models at this size (sd between 480 and 854 px, else hd)."""
    return SD_SCALE if 480 <= height <= 854 and 480 <= width <= 854 else HD_SCALE


def release_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, times)`` of the release's sampler: shifted ``linspace(1, 0, steps + 1)``."""
    sigmas = shift_time(torch.linspace(1.0, 0.0, steps + 1), shift)
    return sigmas, sigmas[:-1].clone()


class Kandinsky5(FlowPipeline):
    """Kandinsky 5 DiT + VAE + Qwen2.5-VL (``text_encoder``) + CLIP (``pooled_encoder``).

    ``video=False`` for the image models (one frame, the DiT's own RoPE scale).
    """

    def __init__(
        self,
        components,
        *,
        video: bool = True,
        schedule: str = "release",
        placement=None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(components, placement=placement, dtype=dtype)
        if schedule not in SCHEDULES:
            raise CineforgeError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
        self.pooled_encoder = components.pooled_encoder
        self.video = video
        self.schedule_name = schedule

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config, *, video: bool = True) -> None:
        """Raise a CineforgeError for a request these configs cannot honour (before loading)."""
        multiple = vae_config.spatial_ratio * dit_config.patch_size[1]
        attention = get_attention_backend(dit_config.attention)
        if isinstance(attention, NablaAttention):  # whole NABLA tiles of patches
            multiple *= max(attention.tile[1:])
        check_request(r, multiple=multiple, temporal_ratio=vae_config.temporal_ratio)
        if not video and r.frames != 1:
            raise CineforgeError(
                f"this Kandinsky 5 image model makes one frame, not {r.frames}; use {{frames}} 1",
                fields=("frames",)
            )

    def check(self, r: VideoRequest) -> None:
        self.check_request(r, self.dit.config, self.vae.config, video=self.video)

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        c = self.vae.config
        frames = 1 + (r.frames - 1) // c.temporal_ratio
        s = c.spatial_ratio
        return (batch, self.dit.config.in_channels, frames, r.height // s, r.width // s)

    def initial_latents(self, r: VideoRequest, batch: int) -> torch.Tensor:
        b, c, t, h, w = self.latent_shape(r, batch)
        generator = torch.Generator().manual_seed(r.seed)
        noise = torch.randn((b, t, h, w, c), generator=generator, dtype=torch.float32)
        return noise.permute(0, 4, 1, 2, 3).contiguous()

    def rope_scale(self, r: VideoRequest) -> tuple[float, float, float]:
        if self.video:
            return video_rope_scale(r.height, r.width)
        return tuple(self.dit.config.rope_scale)

    def encode(self, texts: Sequence[str]) -> tuple[TextStates, torch.Tensor]:
        """Qwen2.5-VL states (with mask) and CLIP pooled vectors of ``texts``."""
        with self.placement.use(self.text_encoder.model):
            states = self.text_encoder.encode(texts)
        with self.placement.use(self.pooled_encoder.model):
            pooled = self.pooled_encoder.pooled(texts)
        return states, pooled

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        prompts = list(prompts)
        texts = prompts if r.guidance == 1 else [*prompts, r.negative]
        text, pooled = self.encode(texts)
        n = max(1, int(text.lengths.max()))  # cut the padding no text reaches
        parts = {"text": text.states[:, :n], "pooled": pooled, "text_mask": text.mask[:, :n]}
        if parts["text_mask"].all():  # nothing to mask: attention may take a faster kernel
            del parts["text_mask"]
        k, scale = len(prompts), {"rope_scale": self.rope_scale(r)}
        cond = {name: v[:k] for name, v in parts.items()} | scale
        if r.guidance == 1:
            return cond, None
        return cond, {name: v[k:].expand_as(cond[name]) for name, v in parts.items()} | scale

    def schedule(self, steps: int, shift: float, solver: str) -> tuple[torch.Tensor, ...]:
        if self.schedule_name == "release" and solver == "euler":
            return release_schedule(steps, shift)
        return get_solver(solver).schedule(steps, shift)

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] (B, 3, T, H, W) on the CPU; ``tile`` in pixels, or None."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            latents = latents.to(next(vae.parameters()).device, torch.float32)
            if isinstance(vae, HunyuanVAE):
                tiling = HunyuanTiling()
                if tile is not None:
                    size = max(64, tile // 8 * 8)
                    tiling = HunyuanTiling(size=size, stride=max(8, size * 3 // 4 // 8 * 8))
                return vae.decode(latents, tiling=tiling).cpu()
            cells = None if tile is None else max(2, tile // vae.config.spatial_ratio)
            return vae.decode(latents, tile=cells).cpu()
