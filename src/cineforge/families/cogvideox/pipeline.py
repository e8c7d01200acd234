"""CogVideoX text-to-video, as diffusers' ``CogVideoXPipeline`` runs it.

CogVideoX's pieces of the shared stages (``cineforge.pipelines.common.FlowPipeline``):

- conditioning: T5 states of the prompt (226 rows, unmasked; ``text.py``) and, under
  guidance, of the negative prompt. Guidance is on when ``guidance > 1``, as in diffusers;
  1 or less runs the conditional model alone;
- noise: drawn in diffusers' latent layout (B, T, C, H, W), so a seed gives its latents;
- sampling: discrete-time v-prediction (``cineforge.sampling.ddpm``), ``solver`` "ddim" or
  "dpm" over ``steps`` trailing timesteps, with ``shift`` the schedule's SNR shift scale
  (3.0 for 2B, 1.0 for 5B). The DPM solver's per-step noise comes from the generator of the
  initial latents, continued after them, as diffusers passes one generator to both;
- dynamic guidance (``dynamic_cfg``, diffusers' ``use_dynamic_cfg``; the CogVideo repo's
  demo runs it with the DPM solver): the scale at timestep t of an N-step run is
  ``1 + g (1 - cos(pi ((N - t) / N) ** 5)) / 2``. That is diffusers' formula as written,
  with the timestep (999, 979, ...) where a step index would give the smooth 1 -> 1 + g ramp
  of the CogVideo repo's sat sampler; it is kept so that runs equal diffusers' runs;
- frames: ``1 + 8k``. The VAE decodes latent frames two at a time and an even number of
  them to 4T frames, not 1 + 4(T - 1) (as diffusers does), so the latent frames are odd;
- CogVideoX 1.5 (frame patches of pt = 2): the odd latent frames get ``pt - 1`` noise frames
  in front, sampled with the others and dropped before decoding (diffusers'
  ``additional_frames``);
- latents are the VAE's scaled latents (``z * scaling_factor``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.pipelines.common import (
    Conditioning,
    FlowPipeline,
    VideoRequest,
    check_request,
)
from cineforge.sampling import SolverStep
from cineforge.sampling.ddpm import DDPM_SOLVERS, cogvideox_schedule, ddpm_steps

NUM_TRAIN_TIMESTEPS = 1000


def dynamic_guidance(guidance: float, timestep: float, steps: int) -> float:
    """diffusers' ``use_dynamic_cfg`` scale at ``timestep`` of a ``steps``-step run."""
    ramp = ((steps - timestep) / steps) ** 5.0
    return 1 + guidance * (1 - math.cos(math.pi * ramp)) / 2


class CogVideoX(FlowPipeline):
    """CogVideoX DiT + VAE + T5 (``text_encoder``). ``dynamic_cfg``: None uses it with the
    "dpm" solver only (the release demo's pairing), True / False always / never."""

    def __init__(self, components, *, dynamic_cfg: bool | None = None, placement=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(components, placement=placement, dtype=dtype)
        self.dynamic_cfg = dynamic_cfg

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config, *,
                      dynamic_cfg: bool | None = None) -> None:
        """Raise a CineforgeError for a request these configs cannot honour (before loading);
        ``dynamic_cfg`` (a pipeline option) allows every request."""
        if r.solver not in DDPM_SOLVERS:
            raise CineforgeError(f"unknown {{solver}} {r.solver!r} for CogVideoX; use one of "
                                 f"{', '.join(DDPM_SOLVERS)}", fields=("solver",))
        multiple = vae_config.spatial_ratio * dit_config.patch_size[1]
        frames_step = vae_config.temporal_ratio * math.lcm(2, dit_config.patch_size[0])
        # the shared checks, with a flow solver's name in place of ours (checked above)
        check_request(dataclasses.replace(r, solver="euler"), multiple=multiple,
                      temporal_ratio=frames_step)
        if r.steps > NUM_TRAIN_TIMESTEPS:
            raise CineforgeError(f"{{steps}} {r.steps} exceeds the model's "
                                 f"{NUM_TRAIN_TIMESTEPS} training timesteps", fields=("steps",))
        if r.frame_noise_share:
            raise CineforgeError("CogVideoX starts from independent noise per frame; use "
                                 "{frame_noise_share} 0", fields=("frame_noise_share",))
        limit = dit_config.max_token_grid
        if limit is not None:
            pt, p = dit_config.patch_size[:2]
            r_t, s = vae_config.temporal_ratio, vae_config.spatial_ratio
            grid = ((1 + (r.frames - 1) // r_t + pt - 1) // pt, r.height // s // p,
                    r.width // s // p)
            size = f"{limit[2] * p * s}x{limit[1] * p * s}"
            if dit_config.learned_positions and grid != limit:
                raise CineforgeError(
                    f"this model's learned positions take exactly {1 + r_t * (limit[0] - 1)} "
                    f"{{frames}} at {{size}} {size}", fields=("frames", "size"))
            if any(m is not None and n > m for n, m in zip(grid, limit, strict=True)):
                raise CineforgeError(f"{{size}} {r.width}x{r.height} is beyond this model's "
                                     f"positions: use at most {size}", fields=("size",))

    def check(self, r: VideoRequest) -> None:
        self.check_request(r, self.dit.config, self.vae.config)

    def padding(self) -> int:
        """Noise frames in front of the latents (CogVideoX 1.5: pt - 1)."""
        return self.dit.config.patch_size[0] - 1

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        """The sampled latents, padding frames included."""
        c = self.vae.config
        frames = 1 + (r.frames - 1) // c.temporal_ratio + self.padding()
        s = c.spatial_ratio
        return (batch, self.dit.config.in_channels, frames, r.height // s, r.width // s)

    def initial_latents(self, r: VideoRequest, batch: int) -> torch.Tensor:
        b, c, t, h, w = self.latent_shape(r, batch)
        generator = torch.Generator().manual_seed(r.seed)
        noise = torch.randn((b, t, c, h, w), generator=generator, dtype=torch.float32)
        return noise.permute(0, 2, 1, 3, 4).contiguous()

    def fresh_noise(self, r: VideoRequest) -> Callable[[tuple[int, ...]], torch.Tensor]:
        """``noise(shape)`` for the DPM solver: the generator of ``initial_latents``, after
        its draw of the latents (the first call makes that draw again and drops it)."""
        generator = torch.Generator().manual_seed(r.seed)
        fresh = True

        def noise(shape: tuple[int, ...]) -> torch.Tensor:
            nonlocal fresh
            if fresh:
                torch.randn(shape, generator=generator)
                fresh = False
            return torch.randn(shape, generator=generator)

        return noise

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        prompts = list(prompts)
        guided = r.guidance > 1
        texts = [*prompts, r.negative] if guided else prompts
        with self.placement.use(self.text_encoder.model):
            states = self.text_encoder.encode(texts).states
        cond = {"text": states[: len(prompts)]}
        if not guided:
            return cond, None
        return cond, {"text": states[len(prompts):].expand_as(cond["text"])}

    def sample(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        noise: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        shift: float,
        solver: str = "ddim",
        skip: int = 0,
        guidance_until: float = 1.0,
        cache: Callable | None = None,
        fresh_noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
    ) -> Iterator[SolverStep]:
        """Yield every step of ``solver`` from ``noise`` (float32 latents, B, C, T, H, W);
        the DiT sees ``dit(x, timestep, text)`` (and ``y=cond["y"]`` when present:
        image-to-video), guided by ``uncond`` (None: no guidance).
        ``guidance_until``: share of the steps (the first ones) run with guidance; ``cache``
        wraps the guided prediction; ``fresh_noise(shape)``: the DPM solver's draws, in
        diffusers' layout (B, T, C, H, W). The padding frames are dropped from each yielded
        step (its ``x`` and ``x0``)."""
        if skip:
            raise CineforgeError("CogVideoX has no video-to-video; use strength 1")
        schedule = cogvideox_schedule(steps, shift, num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        guided = uncond is not None and guidance > 1
        count = math.ceil(guidance_until * steps - 1e-9)  # steps run with guidance
        until = float(schedule.timesteps[count - 1]) if count else math.inf
        dynamic = solver == "dpm" if self.dynamic_cfg is None else self.dynamic_cfg
        pad = self.padding()
        with self.placement.use(self.dit) as dit:
            device = next(dit.parameters()).device
            text = cond["text"].to(device, self.dtype)
            if guided:
                text = torch.cat([text, uncond["text"].to(device, self.dtype)])
            y = cond.get("y")  # image-to-video: the same conditioning for both branches
            y = None if y is None else y.to(device, self.dtype)

            def model(x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
                extra = {} if y is None else {"y": y.repeat(len(x) // len(y), 1, 1, 1, 1)}
                with torch.no_grad():
                    return dit(x.to(self.dtype), t, states, **extra).float()

            def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                timestep = float(t[0])
                if not guided or timestep < until:
                    return model(x, t, text[: len(x)])
                v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), text).chunk(2)
                scale = dynamic_guidance(guidance, timestep, steps) if dynamic else guidance
                return v_uncond + scale * (v_cond - v_uncond)

            def draw() -> torch.Tensor:
                b, c, t, h, w = noise.shape
                return fresh_noise((b, t, c, h, w)).permute(0, 2, 1, 3, 4).to(device)

            predictor = predict if cache is None else cache(predict)
            for step in ddpm_steps(solver, predictor, noise.to(device), schedule,
                                   None if fresh_noise is None else draw):
                yield dataclasses.replace(step, x=step.x[:, :, pad:], x0=step.x0[:, :, pad:])

    def decode(self, latents: torch.Tensor, *, tile: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] (B, 3, T, H, W) on the CPU from scaled latents (no padding
        frames); ``tile`` in pixels, or None."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            cells = None if tile is None else max(2, tile // vae.config.spatial_ratio)
            latents = latents.to(next(vae.parameters()).device, torch.float32)
            return vae.decode(latents, tile=cells).cpu()
