"""Wan 2.2 TI2V: text-to-video, and image-to-video with a clean first latent frame.

Without an image this is Wan's ``TextToVideo``. With one (the release's ``textimage2video``,
diffusers' ``WanImageToVideoPipeline`` with ``expand_timesteps``):

    first = VAE.encode(image)                       (B, 48, 1, h, w, normalised)
    every DiT call sees [first, x[:, :, 1:]] with time 0 on frame 0 (``WanTI2VDiT``)
    every step's latents (and the final ones) have frame 0 set to ``first``

Guidance's unconditional branch gets the same first frame with the negative prompt's text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from cineforge.families.wan.pipeline import TextToVideo
from cineforge.pipelines.common import Conditioning, VideoRequest, prepare_image
from cineforge.sampling import SolverStep


def with_first_frame(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, T, H, W) with its first frame replaced by ``first`` (B, C, 1, H, W)."""
    return torch.cat([first.to(x), x[:, :, 1:]], dim=2)


class TextImageToVideo(TextToVideo):
    """``WanTI2VDiT`` + Wan 2.2 VAE + text encoder; ``image`` in a request is the first frame."""

    image_to_video = True

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = super().conditions(prompts, r)
        if r.image is None:
            return cond, uncond
        frame, _ = prepare_image(r.image, r.width, r.height)
        first = self.encode_video(frame[:, :, None]).expand(len(prompts), -1, -1, -1, -1)
        return {**cond, "first": first}, None if uncond is None else {**uncond, "first": first}

    def sample(self, cond: Conditioning, uncond: Conditioning | None, noise: torch.Tensor,
               **options) -> Iterator[SolverStep]:
        """``FlowPipeline.sample``; with ``first`` in ``cond``, every step's ``x`` and ``x0``
        hold the clean first frame."""
        first = cond.get("first")
        for step in super().sample(cond, uncond, noise, **options):
            if first is not None:
                step = dataclasses.replace(step, x=with_first_frame(step.x, first),
                                           x0=with_first_frame(step.x0, first))
            yield step
