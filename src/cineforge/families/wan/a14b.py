"""Wan 2.2 A14B (Wan-Video/Wan2.2, ``wan/configs/wan_t2v_A14B.py``, ``wan_i2v_A14B.py``):
two Wan 14B experts (``experts.py``) over Wan 2.1's VAE and umT5-XXL.

    T2V A14B: 16 input channels; boundary 0.875, shift 12, guidance 4 (high noise) / 3 (low)
    I2V A14B: 36 input channels (mask + first-frame latents as Wan 2.1 I2V, no CLIP path);
              boundary 0.9, shift 5, guidance 3.5 / 3.5

Both sample 81 frames at 1280x720 and 16 fps in 40 steps. The denoise loop is the shared
one; only the velocity changes: at each step the expert for its flow time runs, under its
own guidance, and with offloading only that expert is on the device (the high-noise one
until the boundary, then the low-noise one).

This module holds the family objects ``WAN22_T2V_A14B`` and ``WAN22_I2V_A14B`` and presets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from cineforge.families.family import (
    MINILM,
    Family,
    SamplerDefaults,
)
from cineforge.families.wan import UMT5_XXL, WAN21_T2V_14B, WAN_NEGATIVE, wan_layouts
from cineforge.families.wan.dit import WAN_DIT_14B, WAN_DIT_TINY
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.families.wan.experts import (
    EXPERTS,
    ExpertFiles,
    WanExperts,
    WanExpertsConfig,
    experts_keymap,
)
from cineforge.families.wan.i2v import ImageToVideo
from cineforge.families.wan.pipeline import TextToVideo
from cineforge.families.wan.vae import WAN_VAE_TINY, WanVAE
from cineforge.pipelines.common import Conditioning, VideoRequest, _to
from cineforge.sampling import SolverStep, Velocity, get_solver, guided_velocity, solver_steps
from cineforge.sampling.guidance import batchable


class TwoExperts:
    """The sampling of a two-expert pipeline (mixed into a Wan pipeline): ``self.dit`` is a
    ``WanExperts``; ``guidance`` is the high-noise expert's, ``guidance_2`` the low-noise
    one's (None: the same)."""

    def sample_options(self, r: VideoRequest) -> dict[str, Any]:
        return {"guidance_2": r.guidance_2}

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
        guidance_2: float | None = None,
    ) -> Iterator[SolverStep]:
        """``FlowPipeline.sample`` with the expert, and its guidance, chosen per step."""
        chosen = get_solver(solver)
        sigmas, times = self.schedule(steps, shift, solver)
        sigmas, times = sigmas[skip:], times[skip:]
        guided = math.ceil(guidance_until * len(times) - 1e-9)
        until = None if guided >= len(times) else (
            float(times[guided - 1]) if guided else math.inf)
        scales = {True: guidance, False: guidance if guidance_2 is None else guidance_2}
        uncond = cond if uncond is None else uncond
        device = self.placement.device
        cond, uncond = _to(cond, device, self.dtype), _to(uncond, device, self.dtype)
        resident: dict[bool, Velocity] = {}  # the expert on the device: high noise or not

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            high = float(t.reshape(-1)[0]) >= self.dit.config.boundary
            if high not in resident:
                stack.close()  # the other expert leaves the device first
                resident.clear()
                dit = stack.enter_context(self.placement.use(self.dit.expert(1.0 if high
                                                                             else 0.0)))

                def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
                    with torch.no_grad():
                        return dit(x.to(self.dtype), t, **kwargs).float()

                resident[high] = guided_velocity(model, cond, uncond, scales[high],
                                                 batched=batchable(cond, uncond), until=until)
            return resident[high](x, t)

        with contextlib.ExitStack() as stack:
            run = velocity if cache is None else cache(velocity)
            yield from solver_steps(chosen, run, noise.to(device), sigmas.to(device),
                                    times.to(device), noise=fresh_noise)


class TextToVideoA14B(TwoExperts, TextToVideo):
    """Wan 2.2 T2V A14B: text-to-video (and video-to-video) with two experts."""


class ImageToVideoA14B(TwoExperts, ImageToVideo):
    """Wan 2.2 I2V A14B: image-to-video with two experts (no CLIP image path)."""


WAN_EXPERTS_FROM_OFFICIAL = experts_keymap(WAN_DIT_FROM_OFFICIAL)
WAN_EXPERTS_FROM_DIFFUSERS = experts_keymap(WAN_DIT_FROM_DIFFUSERS)
_OFFICIAL = ExpertFiles("", "diffusion_pytorch_model", WAN_EXPERTS_FROM_OFFICIAL,
                        parts=tuple((e, e) for e in EXPERTS))
_DIFFUSERS = ExpertFiles("", "diffusion_pytorch_model", WAN_EXPERTS_FROM_DIFFUSERS,
                         parts=tuple(zip(("transformer", "transformer_2"), EXPERTS, strict=True)))

WAN_DIT_T2V_A14B = WanExpertsConfig(**dataclasses.asdict(WAN_DIT_14B), boundary=0.875)
WAN_DIT_I2V_A14B = dataclasses.replace(WAN_DIT_T2V_A14B, in_channels=36, boundary=0.9)
WAN_EXPERTS_TINY = WanExpertsConfig(**dataclasses.asdict(WAN_DIT_TINY), boundary=0.875)


def _family(name: str, tiny: WanExpertsConfig, pipeline: type) -> Family:
    return Family(name=name, dit_class=WanExperts, vae_class=WanVAE, tiny_dit=tiny,
                  tiny_vae=WAN_VAE_TINY, layouts=wan_layouts(_DIFFUSERS, _OFFICIAL),
                  pipeline=pipeline, text_encoder=UMT5_XXL)


WAN22_T2V_A14B = _family("wan2.2-t2v-a14b", WAN_EXPERTS_TINY, TextToVideoA14B)
WAN22_I2V_A14B = _family("wan2.2-i2v-a14b",
                         dataclasses.replace(WAN_EXPERTS_TINY, in_channels=36, boundary=0.9),
                         ImageToVideoA14B)

WAN22_T2V_A14B_PRESET = dataclasses.replace(
    WAN21_T2V_14B,
    name="wan2.2-t2v-a14b",
    summary="Wan 2.2 text-to-video A14B (two 14B experts), 720p",
    family=WAN22_T2V_A14B,
    dit=WAN_DIT_T2V_A14B,
    sampler=SamplerDefaults(steps=40, guidance=4.0, guidance_2=3.0, shift=12.0,
                            negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.2-T2V-A14B",
    diffusers_repo="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
)

WAN22_I2V_A14B_PRESET = dataclasses.replace(
    WAN22_T2V_A14B_PRESET,
    name="wan2.2-i2v-a14b",
    summary="Wan 2.2 image-to-video A14B (two 14B experts), 720p",
    family=WAN22_I2V_A14B,
    dit=WAN_DIT_I2V_A14B,
    sampler=SamplerDefaults(steps=40, guidance=3.5, guidance_2=3.5, shift=5.0,
                            negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.2-I2V-A14B",
    diffusers_repo="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
)

# Random-weight sized for tests and CI, fed by the embedded MiniLM text encoder.
WAN22_I2V_A14B_TINY = dataclasses.replace(
    WAN22_I2V_A14B_PRESET,
    name="wan2.2-i2v-a14b-tiny",
    summary="Wan 2.2 I2V A14B architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN22_I2V_A14B.tiny_dit, text_dim=384, text_len=77),
    vae=WAN_VAE_TINY,
    text_encoder=MINILM,
    width=32,
    height=32,
    frames=5,
    sampler=SamplerDefaults(steps=2, guidance=3.5, guidance_2=3.5, shift=5.0),
    hub_repo=None,
    diffusers_repo=None,
)

PRESETS = (WAN22_T2V_A14B_PRESET, WAN22_I2V_A14B_PRESET, WAN22_I2V_A14B_TINY)
