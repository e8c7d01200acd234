"""Kandinsky 5 image-to-video (Video Lite I2V 2B, Video Pro I2V 19B).

The I2V checkpoints are the ``visual_cond`` video DiTs; the release's ``generate`` (and
diffusers' ``Kandinsky5I2VPipeline``) condition them on a first frame like this:

    first = VAE.encode(image).sample() * scaling_factor      (B, 16, 1, h, w)
    every DiT call: x[:, :, 0] = first, condition latent = 0, mask = 1 on frame 0
    the solver's frame 0 is not used: the final latents keep ``first`` there

then, before decoding, the first four latent frames are renormalised towards the statistics
of the next five (``normalize_first_frames``; "fix mesh artifacts"): each gets the mean and
standard deviation of those reference frames, moved at most -0.05 / +0.1 (mean) and
-0.1 / +0.25 (std) from its own. The release does this per latent frame; diffusers over the
four frames together (it differs from the release there).

Text conditioning, schedule and RoPE scale are the text-to-video pipeline's (``Kandinsky5``).
The image latent is a posterior draw, as in the release, from a generator seeded by the
request's seed (a stream apart from the initial noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.pipeline import Kandinsky5
from cineforge.pipelines.common import Conditioning, VideoRequest, require_image
from cineforge.sampling import SolverStep

_MEAN_BOUNDS, _STD_BOUNDS = (0.05, 0.1), (0.1, 0.25)  # how far a frame's stats may move


def normalize_first_frames(latents: torch.Tensor, frames: int = 4,
                           reference: int = 5) -> torch.Tensor:
    """``latents`` (B, C, T, H, W) with each of the first ``frames`` latent frames of each
    sample moved to the clamped mean and std of the ``reference`` frames after them (the
    release's fix). Needs more than ``frames`` latent frames; fewer are returned unchanged."""
    if latents.shape[2] <= frames:
        return latents
    first, ref = latents[:, :, :frames], latents[:, :, frames : frames + reference]
    mean, std = first.mean(dim=(1, 3, 4), keepdim=True), first.std(dim=(1, 3, 4), keepdim=True)
    ref_mean = ref.mean(dim=(1, 2, 3, 4), keepdim=True)
    ref_std = ref.std(dim=(1, 2, 3, 4), keepdim=True)
    ref_mean = torch.clamp(ref_mean, mean - _MEAN_BOUNDS[0], mean + _MEAN_BOUNDS[1])
    ref_std = torch.clamp(ref_std, std - _STD_BOUNDS[0], std + _STD_BOUNDS[1])
    return torch.cat([(first - mean) / std * ref_std + ref_mean, latents[:, :, frames:]], dim=2)


class Kandinsky5I2V(Kandinsky5):
    """Kandinsky 5 ``visual_cond`` DiT + HunyuanVideo VAE + Qwen2.5-VL + CLIP; the request's
    ``image`` is the first frame."""

    video_to_video = False
    image_to_video = True

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config, *, video: bool = True) -> None:
        require_image(r)
        if not dit_config.visual_cond:
            raise CineforgeError("this Kandinsky 5 DiT has no visual_cond channels and cannot "
                                 "take a first frame")
        Kandinsky5.check_request(r, dit_config, vae_config, video=video)

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = super().conditions(prompts, r)
        first = self.sampled_first_frame(r)
        first = first.expand(len(prompts), -1, -1, -1, -1)
        return {**cond, "first": first}, None if uncond is None else {**uncond, "first": first}

    def sample(self, cond: Conditioning, uncond: Conditioning | None, noise: torch.Tensor,
               **options) -> Iterator[SolverStep]:
        """``FlowPipeline.sample``; with ``first`` in ``cond``, every step's ``x`` and ``x0``
        hold the first frame, and the last step's ``x`` is renormalised
        (``normalize_first_frames``)."""
        first = cond.get("first")
        for step in super().sample(cond, uncond, noise, **options):
            if first is not None:
                x = torch.cat([first.to(step.x), step.x[:, :, 1:]], dim=2)
                if step.index == step.total - 1:
                    x = normalize_first_frames(x)
                x0 = torch.cat([first.to(step.x0), step.x0[:, :, 1:]], dim=2)
                step = dataclasses.replace(step, x=x, x0=x0)
            yield step
