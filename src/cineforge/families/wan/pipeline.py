"""Wan 2.1 text-to-video (and text-to-image with one frame): umT5 / MiniLM states -> DiT.

The stages and their order live in ``cineforge.pipelines.common.FlowPipeline``; here are
Wan's pieces: text states padded to the DiT's text length (the negative prompt's for
guidance), latents shaped by the Wan VAE, tiled decoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import pad_context
from cineforge.pipelines.common import (
    Conditioning,
    FlowPipeline,
    Progress,
    VideoRequest,
    check_request,
)
from cineforge.sampling import SolverStep

__all__ = ["Progress", "TextToVideo", "VideoRequest"]


class TextToVideo(FlowPipeline):
    """Wan DiT + VAE + text encoder (a ``cineforge.families.family.Components``)."""

    video_to_video = True

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config) -> None:
        """Raise a CineforgeError for any request the models cannot honour."""
        multiple = vae_config.spatial_ratio * dit_config.patch_size[1]
        check_request(r, multiple=multiple, temporal_ratio=vae_config.temporal_ratio)
        limit = dit_config.max_token_grid
        if limit is not None:
            pt, ph, pw = dit_config.patch_size
            s, t = vae_config.spatial_ratio, vae_config.temporal_ratio
            grid = ((1 + (r.frames - 1) // t) // pt, r.height // s // ph, r.width // s // pw)
            if any(n > m for n, m in zip(grid, limit, strict=True)):
                most = (1 + (limit[0] * pt - 1) * t, limit[1] * ph * s, limit[2] * pw * s)
                raise CineforgeError(
                    f"this model's position table covers at most {most[0]} frames at "
                    f"{most[2]}x{most[1]}; asked for {{frames}} {r.frames} at {{size}} "
                    f"{r.width}x{r.height}", fields=("frames", "size"))

    def check(self, r: VideoRequest) -> None:
        self.check_request(r, self.dit.config, self.vae.config)

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

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = self.encode_text(prompts, r.negative, r.guidance)
        return {"context": cond}, None if uncond is None else {"context": uncond}

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
        """``sample`` with text states ``cond`` / ``uncond`` (None: reuse ``cond``)."""
        return self.sample(
            {"context": cond}, None if uncond is None else {"context": uncond}, noise,
            steps=steps, guidance=guidance, shift=shift, solver=solver,
        )

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        with self.placement.use(self.vae) as vae, torch.no_grad():
            return vae.encode(video.to(next(vae.parameters()).device, torch.float32)).float().cpu()

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] (B, 3, T, H, W) on the CPU; ``tile`` in pixels, or None."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            device = next(vae.parameters()).device
            cells = None if tile is None else max(2, tile // vae.config.spatial_ratio)
            return vae.decode(latents.to(device, torch.float32), tile=cells).cpu()
