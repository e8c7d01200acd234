"""Kandinsky 4.0 Flash text-to-video (text-to-image with one frame) through the shared stages.

Kandinsky 4's pieces of ``cineforge.pipelines.common.FlowPipeline``, as its release runs them
(``kandinsky/t2v_pipeline.py``):

- conditioning: T5-v1.1-XXL's states of the prompt, all ``text_len`` (224) of them, padding
  included: the release passes no attention mask to T5 or to the DiT;
- sampling: ``sampling.ddpm`` (4 fixed timesteps 999, 749, 499, 249, re-noising before
  every step, x0 from v), no guidance, the ``"flash"`` solver of a request;
- noise: drawn channel-last (B, T, H, W, C) from one generator seeded with the request's
  seed, first the initial latents, then one fresh draw per step: the release's stream;
- latents are the CogVideoX-5B VAE's scaled latents (``z * 0.7``), decoded two latent frames
  at a time, as the release sets ``num_latent_frames_batch_size``; frame counts are 8k + 1
  (2k + 1 latent frames: the release's ``seconds * 8 // 4 + 1``), the counts that VAE
  decodes to ``1 + 4 (T - 1)`` frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.models.attention import get_attention_backend
from cineforge.models.local_global import LocalGlobalAttention
from cineforge.pipelines.common import Conditioning, FlowPipeline, VideoRequest, check_request
from cineforge.sampling import SolverStep
from cineforge.sampling.ddpm import FLASH_STEPS, flash_ddpm_schedule, renoise_steps

SOLVER = "flash"


def draw_latents(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal float32 latents ``shape`` (B, C, T, H, W), drawn channel-last."""
    b, c, t, h, w = shape
    noise = torch.randn((b, t, h, w, c), generator=generator, dtype=torch.float32)
    return noise.permute(0, 4, 1, 2, 3).contiguous()


class Kandinsky4Flash(FlowPipeline):
    """Kandinsky 4.0 Flash DiT + CogVideoX VAE + T5 (``text_encoder``)."""

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config) -> None:
        """Raise a CineforgeError for a request these configs cannot honour (before loading)."""
        s, t = vae_config.spatial_ratio, vae_config.temporal_ratio
        pt, ph, pw = dit_config.patch_size
        attention = get_attention_backend(dit_config.attention)
        groups = attention.groups if isinstance(attention, LocalGlobalAttention) else (1, 1, 1)
        # Whole pairs of latent frames after the first: the VAE decodes its frames two latent
        # frames at a time and an even count to 4 T frames, not 1 + 4 (T - 1).
        check_request(r, multiple=s * ph * max(groups[1:]), temporal_ratio=2 * t)
        if r.solver != SOLVER or r.steps != FLASH_STEPS:
            raise CineforgeError(
                f"Kandinsky 4 Flash is distilled for its {FLASH_STEPS} re-noising steps; use "
                f"{{solver}} {SOLVER} and {{steps}} {FLASH_STEPS} (got {r.solver}, {r.steps})",
                fields=("solver", "steps"))
        if r.guidance != 1 or r.cache != "none" or r.frame_noise_share != 0:
            raise CineforgeError(
                "Kandinsky 4 Flash samples without guidance, step cache or frame noise; use "
                "{guidance} 1, {cache} none and {frame_noise_share} 0",
                fields=("guidance", "cache", "frame_noise_share"))
        grid = (1 + (r.frames - 1) // t) // pt, r.height // s // ph, r.width // s // pw
        if grid[0] % groups[0]:
            raise CineforgeError(
                f"{{frames}} {r.frames} gives {grid[0]} latent frames, not a multiple of the "
                f"attention's {groups[0]} time groups", fields=("frames",))
        most = dit_config.max_token_grid
        if any(n > m for n, m in zip(grid, most, strict=True)):
            raise CineforgeError(
                f"the model covers at most {1 + (most[0] * pt - 1) * t} frames at "
                f"{most[2] * pw * s}x{most[1] * ph * s}; asked for {{frames}} {r.frames} at "
                f"{{size}} {r.width}x{r.height}", fields=("frames", "size"))

    def check(self, r: VideoRequest) -> None:
        self.check_request(r, self.dit.config, self.vae.config)

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        c = self.vae.config
        frames = 1 + (r.frames - 1) // c.temporal_ratio
        s = c.spatial_ratio
        return (batch, self.dit.config.in_channels, frames, r.height // s, r.width // s)

    def initial_latents(self, r: VideoRequest, batch: int) -> torch.Tensor:
        return draw_latents(torch.Generator().manual_seed(r.seed), self.latent_shape(r, batch))

    def fresh_noise(self, r: VideoRequest) -> Callable[[tuple[int, ...]], torch.Tensor]:
        """The per-step draws: the same generator as ``initial_latents``, after its draw."""
        generator = torch.Generator().manual_seed(r.seed)
        started = []

        def noise(shape: tuple[int, ...]) -> torch.Tensor:
            if not started:  # the initial latents come first in the stream
                draw_latents(generator, shape)
                started.append(True)
            return draw_latents(generator, shape)

        return noise

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        with self.placement.use(self.text_encoder.model):
            states = self.text_encoder.encode(list(prompts)).states
        return {"text": states}, None

    def sample(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        noise: torch.Tensor,
        *,
        steps: int,
        fresh_noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
        **unused,
    ) -> Iterator[SolverStep]:
        """Yield the Flash steps from ``noise``; the DiT sees ``dit(x, t, text=...)`` with
        integer timesteps. ``unused``: the flow solvers' settings (guidance, shift, ...), which
        ``check_request`` has pinned to their no-op values."""
        if fresh_noise is None:
            raise CineforgeError("Flash sampling re-noises every step: pass fresh_noise=")
        with self.placement.use(self.dit) as dit:
            device = next(dit.parameters()).device
            text = cond["text"].to(device, self.dtype)

            def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return dit(x.to(self.dtype), t, text=text).float()

            yield from renoise_steps(predict, noise.to(device), flash_ddpm_schedule(steps),
                                     lambda shape: fresh_noise(shape).to(device))

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] (B, 3, T, H, W) on the CPU; ``tile`` in pixels, or None."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            device = next(vae.parameters()).device
            cells = None if tile is None else max(2, tile // vae.config.spatial_ratio)
            return vae.decode(latents.to(device, torch.float32), tile=cells).cpu()
